"""The one check every data reader's output passes before it is partitioned or trained on.

Built-in sources, your own files (imagefolder, npz, csv, hf), a ``dataset = "module:function"``
plug-in and the Python API's arrays all end in a :class:`~featherfl.data.sources.Dataset`;
:func:`validate_dataset` is called on it in ``load_dataset``, so a reader cannot forget a
check. Each problem is a one-line ConfigError (exit 2) naming the source and the fix,
instead of what it used to become downstream: a client silently rejected every round
(values that overflow float32), accuracy 1.0 (one class) or 0.0 (test labels the model
never saw), or a MemoryError traceback (one label of 10^9 sizing every per-class array).
"""

from __future__ import annotations

import numpy as np
import torch

from featherfl.config import ConfigError

#: The most classes a dataset may have. Per-class arrays (label histograms, output layers,
#: FD's L x L logits) are sized by it for every client; 100 000 already costs FD 40 GB.
MAX_CLASSES = 100_000


def label_dtype_problem(values, where: str) -> str | None:
    """A message for labels that are not integers (strings, floats, booleans), or None."""
    a = np.asarray(values) if not isinstance(values, torch.Tensor) else values
    if isinstance(a, torch.Tensor):
        if a.dtype == torch.bool or a.is_floating_point() or a.is_complex():
            return f"{where}: labels are {str(a.dtype).replace('torch.', '')}; labels must be integers 0..K-1 (class indices)"
        return None
    if a.dtype.kind in "USO":
        sample = ", ".join(repr(str(v)) for v in a.reshape(-1)[:3])
        return (
            f"{where}: labels are strings ({sample}, ...); labels must be integers 0..K-1 or, in csv and imagefolder data, class names: "
            "map names to integers first (numpy.unique(y, return_inverse=True))"
        )
    if a.dtype.kind in "fcb":
        return f"{where}: labels are {a.dtype}; labels must be integers 0..K-1 (class indices)"
    return None


def validate_dataset(ds, source: str):
    """Check ``ds`` (a Dataset) completely; return it unchanged or raise ConfigError.

    - every split non-empty, inputs and labels of equal length, train and test inputs of one shape;
    - labels integers >= 0, the class count bounded (:data:`MAX_CLASSES`, and not mostly
      empty: labels must be 0..K-1, not arbitrary ids) before anything per class is allocated;
    - at least 2 classes in training, and no test label the training data lacks;
    - floating-point inputs finite as float32 (what the model computes in).
    """
    where = f"dataset {source}"
    for split, x, y in (("train", ds.train_x, ds.train_y), ("test", ds.test_x, ds.test_y)):
        if len(y) == 0:
            raise ConfigError(f"{where}: the {split} split is empty")
        if len(x) != len(y):
            raise ConfigError(f"{where}: {split} has {len(x)} inputs and {len(y)} labels; they must match")
        problem = label_dtype_problem(y, f"{where} ({split})")
        if problem:
            raise ConfigError(problem)
        if y.dim() != 1:
            raise ConfigError(f"{where}: {split} labels have shape {tuple(y.shape)}; expected one integer per row")
        if int(y.min()) < 0:
            raise ConfigError(f"{where}: {split} labels include {int(y.min())}; labels must be integers 0..K-1")
    if tuple(ds.train_x.shape[1:]) != tuple(ds.test_x.shape[1:]):
        raise ConfigError(f"{where}: train inputs {tuple(ds.train_x.shape[1:])} and test inputs {tuple(ds.test_x.shape[1:])} differ in shape")
    top = max(int(ds.train_y.max()), int(ds.test_y.max()))
    train_classes = torch.unique(ds.train_y)
    if top + 1 > MAX_CLASSES or ds.num_classes > MAX_CLASSES:
        k = max(top + 1, ds.num_classes)
        raise ConfigError(
            f"{where}: {k:,} classes (largest label {top:,}); featherfl allows at most {MAX_CLASSES:,}, as per-class arrays for "
            f"every client would need about {k * 8 / 2**30:.3g} GiB each. Labels must be class indices 0..K-1: remap them (numpy.unique(y, return_inverse=True))"
        )
    distinct = len(train_classes)
    if top + 1 > 2 * distinct + 10:
        raise ConfigError(
            f"{where}: labels run up to {top:,} but only {distinct} distinct values appear in training; labels must be class indices 0..K-1: "
            "remap them (numpy.unique(y, return_inverse=True))"
        )
    if distinct < 2:
        raise ConfigError(f"{where}: the training labels hold {distinct} class ({', '.join(str(int(c)) for c in train_classes)}); classification needs at least 2")
    unseen = sorted(set(torch.unique(ds.test_y).tolist()) - set(train_classes.tolist()))
    if unseen:
        raise ConfigError(f"{where}: test labels {unseen[:5]} never appear in training; the model cannot learn them (add training rows or drop those test rows)")
    if ds.num_classes < top + 1:
        raise ConfigError(f"{where}: labels reach {top} but the source declares {ds.num_classes} classes")
    for split, x in (("train", ds.train_x), ("test", ds.test_x)):
        if x.is_floating_point() and not getattr(ds, "inputs_checked", False):
            row = first_nonfinite_row(x)
            if row is not None:
                raise ConfigError(f"{where}: {split} inputs hold NaN, infinite or float32-overflowing values (first at row {row}); clean or rescale them")
    return ds


def first_nonfinite_row(x: torch.Tensor, rows: int = 65536, after_block=None) -> int | None:
    """The first row holding a value that is not finite as float32, or None; a block of rows at a
    time, so checking a population's training array needs no second array of its size.
    ``after_block(start, stop)`` is called once each block is checked (a memory-mapped reader
    lets go of the pages it read)."""
    for i in range(0, len(x), rows):
        block = x[i : i + rows] if x.dtype == torch.float32 else x[i : i + rows].float()
        if not len(block) or not block.numel():
            continue
        lo, hi = torch.aminmax(block)  # one pass, no mask; NaN and +-inf show in the min or max
        if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
            finite = torch.isfinite(block)
            return i + int((~finite).reshape(len(block), -1).any(dim=1).nonzero()[0, 0])
        if after_block is not None:
            after_block(i, i + len(block))
    return None
