"""The methods, one file each; the registry that names them is ``algorithms.registry``."""

from __future__ import annotations

from featherfl.algorithms.registry import REGISTRY, get, names

__all__ = ["REGISTRY", "get", "names"]
