"""Algorithm registry: name -> "module:Class". One file per method.

A leaf module (it imports nothing of featherfl), so every layer may ask it for a method by
name. Modules are imported lazily so a method's heavy optional dependencies load only
when that method runs.
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


def names() -> list[str]:
    return sorted(REGISTRY)


def get(name: str):
    """The Algorithm class registered as ``name``, or named by a ``module:Class`` path (a plug-in,
    see ``featherfl.plugins``: a fresh worker process finds it from the path alone)."""
    mod, cls = REGISTRY.get(name, name).split(":")
    return getattr(importlib.import_module(mod), cls)
