"""Algorithm registry: name -> "module:Class". One file per method.

A leaf module (it imports nothing of featherfl), so every layer may ask it for a method by
name. Modules are imported lazily so a method's heavy optional dependencies load only
when that method runs; a built-in method's config keys are declared apart from its code
(``featherfl.algorithms.sections``), so the schema lists them without importing the method.
"""

from __future__ import annotations

import importlib

REGISTRY: dict[str, str] = {
    "baffle": "featherfl.algorithms.baffle:Baffle",
    "fedavg": "featherfl.algorithms.fedavg:FedAvg",
    "fedpeft": "featherfl.algorithms.fedpeft:FedPEFT",
    "fedsgd": "featherfl.algorithms.fedavg:FedSGD",
    "fd": "featherfl.algorithms.fd:FD",
}

#: a built-in class -> its config section in ``featherfl.algorithms.sections`` (the class's ``CONFIG``)
SECTIONS: dict[str, str] = {
    "featherfl.algorithms.baffle:Baffle": "BAFFLE",
    "featherfl.algorithms.fedavg:FedAvg": "FEDAVG",
    "featherfl.algorithms.fedpeft:FedPEFT": "FEDPEFT",
    "featherfl.algorithms.fedavg:FedSGD": "FEDSGD",
    "featherfl.algorithms.fd:FD": "FD",
}


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str):
    """The Algorithm class registered as ``name``, or named by a ``module:Class`` path (a plug-in,
    see ``featherfl.plugins``: a fresh worker process finds it from the path alone)."""
    mod, cls = REGISTRY.get(name, name).split(":")
    return getattr(importlib.import_module(mod), cls)


def config(name: str) -> dict:
    """The config keys of the method registered as ``name`` (its class's ``CONFIG``): a built-in
    method's from its declaration, without importing the method; a plug-in's from its class."""
    section = SECTIONS.get(REGISTRY.get(name, name))
    if section is None:
        return get(name).CONFIG
    return getattr(importlib.import_module("featherfl.algorithms.sections"), section)
