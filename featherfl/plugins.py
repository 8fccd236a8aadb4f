"""Plug-ins by dotted path: ``model.name = "mypkg.models:build"``, ``dataset = "mypkg.data:load"``.

A user's own model or data needs no edit to featherfl: the config names a callable as
``module:attribute`` (importable from the current folder or the environment), and it is imported,
checked and registered when the config is built, so a path that does not import, or a
callable that returns the wrong thing, is a one-line ConfigError (exit 2) before any run
folder is written. The path is the registry name, so config.toml records it and a resume
finds it again.

- model: ``build(input_shape: tuple, num_classes: int) -> torch.nn.Module``
- dataset: ``load() -> (train_x, train_y, test_x, test_y)`` (tensors or arrays) or a
  featherfl ``Dataset``
- algorithm: ``algorithm = "mypkg.fedprox:FedProx"``, a ``featherfl.algorithms.base.Algorithm``
  subclass (docs/architecture.md shows a complete one); its ``CONFIG`` keys join the schema
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from featherfl.config import ConfigError


def is_dotted(name: str) -> bool:
    return ":" in name and all(part.strip() for part in name.split(":", 1))


def _cwd_importable() -> None:
    """Put the working folder on ``sys.path``, as ``python -m`` does: a plug-in file beside the
    user's config (``mymodel.py`` -> ``mymodel:build``) imports without ``PYTHONPATH=.``."""
    import os
    import sys

    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def load_callable(path: str, key: str) -> Callable:
    module, _, attr = path.partition(":")
    _cwd_importable()
    try:
        obj: Any = importlib.import_module(module)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # ImportError, or the module failing on import, sys.exit() included
        raise ConfigError(f"config key {key!r}: cannot import {module!r} from the current folder or PYTHONPATH ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"config key {key!r}: {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"config key {key!r}: {path} is not callable")
    return obj


def register_algorithm_path(path: str) -> None:
    """Register an ``Algorithm`` subclass named by ``module:Class`` under that path."""
    from featherfl.algorithms.base import Algorithm
    from featherfl.algorithms.registry import REGISTRY

    if path in REGISTRY:
        return
    cls = load_callable(path, "algorithm")
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise ConfigError(f"config key 'algorithm': {path} is not a featherfl Algorithm subclass")
    REGISTRY[path] = path


def model_builder(path: str, factory: Callable) -> Callable:
    """A registry builder around a user factory, checking what it returns."""
    from torch import nn

    def build(input_shape, num_classes, **_):
        try:
            m = factory(tuple(input_shape), num_classes)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # sys.exit() in a factory too
            raise ConfigError(f"model {path} failed: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        if not isinstance(m, nn.Module):
            raise ConfigError(f"model {path} returned {type(m).__name__}, expected a torch.nn.Module")
        return m

    return build


def register_model_path(path: str) -> None:
    from featherfl.models import model_names
    from featherfl.models.registry import REGISTRY

    if path not in model_names():
        REGISTRY[path] = model_builder(path, load_callable(path, "model.name"))


def dataset_from_arrays(data, name: str, note: str):
    """A checked Dataset from ``(train_x, train_y, test_x, test_y)`` or a Dataset."""
    import numpy as np
    import torch

    from featherfl.data.dataset import Dataset

    if isinstance(data, Dataset):
        return data
    if not (isinstance(data, (tuple, list)) and len(data) == 4):
        raise ConfigError(f"dataset {name}: expected (train_x, train_y, test_x, test_y) or a featherfl Dataset")
    from featherfl.data.validate import label_dtype_problem

    for what, labels in (("train", data[1]), ("test", data[3])):
        if problem := label_dtype_problem(labels, f"dataset {name} ({what})"):
            raise ConfigError(problem)  # strings would otherwise fail inside torch as a TypeError
    try:
        tx, ty, vx, vy = (torch.as_tensor(np.asarray(a)) for a in data)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"dataset {name}: cannot read the arrays ({e.__class__.__name__})") from None
    for what, x, y in (("train", tx, ty), ("test", vx, vy)):
        if len(x) != len(y) or len(y) == 0:
            raise ConfigError(f"dataset {name}: {what} has {len(x)} inputs and {len(y)} labels; they must match and be non-empty")
        if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool or int(y.min()) < 0:
            raise ConfigError(f"dataset {name}: {what} labels must be a 1-D array of integers >= 0")
    if tx.shape[1:] != vx.shape[1:]:
        raise ConfigError(f"dataset {name}: train inputs {tuple(tx.shape[1:])} and test inputs {tuple(vx.shape[1:])} differ in shape")
    classes = int(max(int(ty.max()), int(vy.max()))) + 1
    conv = (lambda a: a.float()) if tx.is_floating_point() else (lambda a: a.long())
    return Dataset(name, conv(tx), ty.long(), conv(vx), vy.long(), classes, tuple(tx.shape[1:]), note)


def register_dataset_path(path: str) -> None:
    from featherfl.data.dataset import SOURCES, register_source

    if path in SOURCES:
        return
    loader = load_callable(path, "dataset")

    def source(cfg):
        try:
            data = loader()
        except (ConfigError, KeyboardInterrupt):
            raise
        except BaseException as e:  # sys.exit() in a loader too
            raise ConfigError(f"dataset {path} failed: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        return dataset_from_arrays(data, path, f"loaded by {path}")

    register_source(path, source)
