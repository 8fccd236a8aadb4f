"""A loaded dataset, the source registry, and stratified splits: a leaf module, so every
source file (``sources``, ``files``, ``hf``, ``text``) registers here without importing the
module that loads them all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

#: dataset name -> ``source(cfg) -> Dataset``
SOURCES: dict[str, Callable] = {}


def register_source(name: str, fn) -> None:
    SOURCES[name] = fn


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    note: str = ""
    #: a client id per training row, where the data has one (``partition.name = natural``)
    train_groups: torch.Tensor | None = None
    #: the reader already checked that every input is finite (the npz reader, block by block)
    inputs_checked: bool = False
    #: where ``train_x`` is a memory-mapped file (an uncompressed npz): ``release(start, stop)`` lets
    #: go of the pages of rows [start, stop), clean copies of the file the kernel maps again when read
    train_pages: Callable[[int, int], None] | None = None


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split into (train_idx, test_idx)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    _, keep = stratified_split(labels, n / len(labels), seed)
    return keep
