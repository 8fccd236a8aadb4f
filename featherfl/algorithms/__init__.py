"""Algorithm registry: name -> "module:Class". One file per method.

Modules are imported lazily so a method's heavy optional dependencies load
only when that method runs.
"""

from __future__ import annotations

import importlib

from featherfl.config import Field

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


def all_config_sections() -> dict[str, Field]:
    """Every method's keys, and the [faug] and [secagg] keys of the wrappers that work around any method."""
    from featherfl.algorithms.faug import FAUG_CONFIG
    from featherfl.compress import COMPRESS_CONFIG
    from featherfl.secagg import SECAGG_CONFIG

    out: dict[str, Field] = {**FAUG_CONFIG, **SECAGG_CONFIG, **COMPRESS_CONFIG}
    for n in names():
        out.update(get(n).CONFIG)
    return out
