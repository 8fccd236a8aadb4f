"""Engines: HOW rounds run (in-process, Ray actors, Flower SuperNodes). Each knows nothing of any one algorithm."""

from __future__ import annotations


def make_engine(name: str, *args, **kw):
    if name == "local":
        from featherfl.engines.local import LocalEngine

        return LocalEngine(*args, **kw)
    if name == "ray":
        from featherfl.engines.ray_engine import RayEngine

        return RayEngine(*args, **kw)
    if name == "flower":
        from featherfl.engines.flower_engine import FlowerEngine

        return FlowerEngine(*args, **kw)
    raise ValueError(f"unknown engine {name!r}")
