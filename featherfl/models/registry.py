"""Model registry: architecture name -> builder. A leaf module, so model files register here
without importing the ``featherfl.models`` package that loads them."""

from __future__ import annotations

from typing import Callable

REGISTRY: dict[str, Callable] = {}


def register_model(name: str) -> Callable:
    def deco(fn: Callable) -> Callable:
        if name in REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        REGISTRY[name] = fn
        return fn

    return deco
