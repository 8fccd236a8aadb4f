"""Hugging Face ``datasets`` folders written by ``save_to_disk``, read offline with ``load_from_disk``.

``dataset = "hf"`` and ``data.dir`` = the folder (a ``Dataset`` or a ``DatasetDict``).
Nothing is fetched from the hub and nothing is unpickled: ``load_from_disk`` reads Arrow
files and JSON metadata, and images are decoded by Pillow.

- Splits: a ``DatasetDict``'s ``train`` split trains (a dict with one split uses it) and its
  ``test`` split, else its ``validation`` split, is the test set (a split labelled -1
  throughout, as GLUE's test sets are, is passed over); without one,
  ``data.test_fraction`` is held out, stratified by label.
- Labels: ``data.label_column``, a ``ClassLabel`` (its names are the classes), integers
  >= 0, or strings (the sorted distinct strings are the classes).
- Inputs: ``data.input_column``, or the one Image column there is, or without one the one
  string column (string columns beside an image are taken for metadata).
  An ``Image`` column gives what the vision models take (N x C x H x W floats in [0, 1];
  grayscale stays 1 channel, anything else becomes RGB; ``data.image_size`` resizes), a
  string column gives token ids for ``model.pretrained``'s tokenizer (N x L int64, padded
  with its pad id), as the SST-2 / AG News sources do, for FedPEFT's text encoders.
- ``data.client_column`` (any strings or integers) gives a client id per training row for
  ``partition.name = natural``.

Every problem (no folder, not a ``save_to_disk`` folder, a missing column, a column of the
wrong type, the package missing) is a one-line ConfigError naming what to do.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from featherfl.config import ConfigError
from featherfl.data.files import _root, _split, _stack
from featherfl.data.dataset import Dataset, register_source

INSTALL = "pip install 'featherfl[hf]'"
EXPECT = "a folder written by datasets' save_to_disk (a Dataset or a DatasetDict)"
TEST_SPLITS = ("test", "validation")


def _datasets():
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"dataset hf reads folders with Hugging Face datasets' load_from_disk, which is not installed: {INSTALL}") from None
    return datasets


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{e.__class__.__name__}: {text.splitlines()[0][:160]}" if text else e.__class__.__name__


def open_folder(cfg):
    """``(root, train split, test split or None, split note)`` of ``data.dir``."""
    root = _root(cfg, "hf", EXPECT)
    if not root.is_dir():
        raise ConfigError(f"dataset hf: data.dir {root} is not a folder; expected {EXPECT}")
    if not ((root / "dataset_dict.json").is_file() or (root / "state.json").is_file()):
        raise ConfigError(f"dataset hf: {root} has no dataset_dict.json or state.json; expected {EXPECT}")
    datasets = _datasets()
    try:
        d = datasets.load_from_disk(str(root))
    except Exception as e:  # damaged metadata or Arrow files: whatever load_from_disk raises
        raise ConfigError(f"dataset hf: load_from_disk cannot read {root} ({_first_line(e)})") from None
    if isinstance(d, datasets.DatasetDict):
        splits = list(d.keys())
        if "train" in d:
            train_name = "train"
        elif len(splits) == 1:
            train_name = splits[0]
        else:
            raise ConfigError(f"dataset hf: {root} has splits {', '.join(splits)} but no 'train' split; name the training split 'train'")
        candidates = [s for s in TEST_SPLITS if s in d and s != train_name]
        unlabelled = [s for s in candidates if _unlabelled(d[s], cfg["data.label_column"], datasets)]
        test_name = next((s for s in candidates if s not in unlabelled), None)
        note = f"split {train_name!r} trains, {test_name!r} tests" if test_name else f"split {train_name!r}"
        if unlabelled:
            note += f", {' and '.join(repr(s) for s in unlabelled)} unlabelled so not used"
        return root, d[train_name], (d[test_name] if test_name else None), note
    return root, d, None, "one Dataset"


def _unlabelled(split, column: str, datasets) -> bool:
    """A split whose ClassLabel column is -1 everywhere (GLUE's test sets): no use for testing."""
    feature = split.features.get(column)
    return isinstance(feature, datasets.ClassLabel) and len(split) > 0 and all(v == -1 for v in split[column])


def _kind(feature, datasets) -> str | None:
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return "text"
    return None


def _describe(feature) -> str:
    if hasattr(feature, "dtype") and type(feature).__name__ == "Value":
        return feature.dtype
    return type(feature).__name__


def _input_column(cfg, features, where: str, datasets) -> tuple[str, str]:
    """The input column and its kind ("image" or "text")."""
    skip = {cfg["data.label_column"], cfg["data.client_column"]}
    name = cfg["data.input_column"]
    if name:
        if name not in features:
            raise ConfigError(f"dataset hf: {where} has no input column {name!r} (data.input_column); columns: {', '.join(features)}")
        kind = _kind(features[name], datasets)
        if kind is None:
            raise ConfigError(f"dataset hf: {where} column {name!r} is {_describe(features[name])}; expected an Image column or a string (text) column")
        return name, kind
    found = [(c, _kind(f, datasets)) for c, f in features.items() if c not in skip and _kind(f, datasets)]
    images = [(c, k) for c, k in found if k == "image"]
    if images:  # string columns beside an image are metadata (file names, writers, captions)
        found = images
    if len(found) == 1:
        return found[0]
    if not found:
        kinds = ", ".join(f"{c} ({_describe(f)})" for c, f in features.items() if c not in skip) or "none"
        raise ConfigError(f"dataset hf: {where} has no Image or string (text) column besides the label; columns: {kinds}")
    raise ConfigError(f"dataset hf: {where} has several input columns ({', '.join(c for c, _ in found)}); choose one with data.input_column")


def _check_columns(cfg, features, where: str, client: bool) -> None:
    label = cfg["data.label_column"]
    if label not in features:
        raise ConfigError(f"dataset hf: {where} has no label column {label!r} (data.label_column); columns: {', '.join(features)}")
    if client and cfg["data.client_column"] and cfg["data.client_column"] not in features:
        raise ConfigError(f"dataset hf: {where} has no client column {cfg['data.client_column']!r} (data.client_column); columns: {', '.join(features)}")


def _values(split, column: str, where: str) -> list:
    values = list(split[column])
    missing = sum(v is None for v in values)
    if missing:
        raise ConfigError(f"dataset hf: {where} column {column!r} has {missing} empty cell(s)")
    return values


def _labels(cfg, train, test, where: str, datasets) -> tuple[torch.Tensor, torch.Tensor | None, int, list[str] | None]:
    """Train and test labels as class indices, the number of classes and (where known) their names."""
    column = cfg["data.label_column"]
    feature = train.features[column]
    ys = [_values(train, column, where)] + ([_values(test, column, f"{where} (test split)")] if test is not None else [])
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        for y in ys:
            if any(v < 0 for v in y):
                raise ConfigError(f"dataset hf: {where} column {column!r} has rows without a label (-1); drop them before save_to_disk")
        out = [torch.tensor(y, dtype=torch.int64) for y in ys]
        classes = max(len(names), 1 + max(int(t.max()) for t in out if len(t)))
    elif isinstance(feature, datasets.Value) and (feature.dtype.startswith(("int", "uint"))):
        out = [torch.tensor(y, dtype=torch.int64) for y in ys]
        if any(len(t) and int(t.min()) < 0 for t in out):
            raise ConfigError(f"dataset hf: {where} column {column!r} has negative labels; expected integers >= 0")
        names, classes = None, 1 + max(int(t.max()) for t in out if len(t))
    elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        names = sorted(set(ys[0]))
        index = {n: i for i, n in enumerate(names)}
        if len(ys) > 1:
            unknown = sorted(set(ys[1]) - set(names))
            if unknown:
                raise ConfigError(f"dataset hf: {where} test split has labels {unknown[:5]} that the training split does not")
        out = [torch.tensor([index[v] for v in y], dtype=torch.int64) for y in ys]
        classes = len(names)
    else:
        raise ConfigError(f"dataset hf: {where} label column {column!r} is {_describe(feature)}; expected a ClassLabel, integers or strings")
    if test is not None and _describe(test.features[column]) != _describe(feature):
        raise ConfigError(f"dataset hf: {where} label column {column!r} is {_describe(feature)} in the training split but {_describe(test.features[column])} in the test split")
    if classes < 2:
        raise ConfigError(f"dataset hf: {where} column {column!r} has {classes} class(es); need at least 2")
    return out[0], (out[1] if len(out) > 1 else None), classes, names


def _pil(item, row: int, where: str):
    """A decoded image (``Image(decode=True)``) or one from the stored bytes or path (``decode=False``)."""
    from PIL import Image

    if isinstance(item, Image.Image):
        return item
    if isinstance(item, dict) and item.get("bytes"):
        return Image.open(io.BytesIO(item["bytes"]))
    if isinstance(item, dict) and item.get("path"):
        return Image.open(item["path"])
    raise ConfigError(f"dataset hf: {where} row {row} holds no image")


def _images(split, column: str, size: int, where: str) -> tuple[list[np.ndarray], list[str]]:
    from PIL import UnidentifiedImageError

    arrays, modes = [], []
    row = 0
    try:
        for row, item in enumerate(split[column]):
            im = _pil(item, row, where)
            im.load()
            modes.append("L" if im.mode in ("1", "L", "I;16", "I") else "RGB")
            img = im.convert(modes[-1])
            if size:
                img = img.resize((size, size))
            arrays.append(np.asarray(img, dtype=np.uint8))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ConfigError(f"dataset hf: {where} column {column!r} row {row} is not a readable image ({e.__class__.__name__})") from None
    if not arrays:
        raise ConfigError(f"dataset hf: {where} holds no rows")
    return arrays, modes


def _texts(split, column: str, where: str) -> list[str]:
    texts = _values(split, column, where)
    blank = next((i for i, t in enumerate(texts) if not t.strip()), None)
    if blank is not None:
        raise ConfigError(f"dataset hf: {where} column {column!r} row {blank} is empty text")
    return texts


def _groups(cfg, train, where: str) -> torch.Tensor | None:
    column = cfg["data.client_column"]
    if not column:
        return None
    values = _values(train, column, where)
    ids = {c: i for i, c in enumerate(sorted(set(values), key=lambda v: (str(type(v)), v)))}
    return torch.tensor([ids[v] for v in values], dtype=torch.int64)


def input_kind(cfg) -> str:
    """"image" or "text": what ``data.dir``'s input column holds (reads only the metadata)."""
    datasets = _datasets()
    root, train, _, _ = open_folder(cfg)
    _check_columns(cfg, train.features, str(root), client=False)
    return _input_column(cfg, train.features, str(root), datasets)[1]


def load_hf(cfg) -> Dataset:
    datasets = _datasets()
    root, train, test, split_note = open_folder(cfg)
    where = str(root)
    _check_columns(cfg, train.features, where, client=True)
    column, kind = _input_column(cfg, train.features, where, datasets)
    if test is not None:
        _check_columns(cfg, test.features, f"{where} (test split)", client=False)
        if column not in test.features or _kind(test.features[column], datasets) != kind:
            raise ConfigError(f"dataset hf: {where} test split has no {kind} column {column!r} like the training split")
    if len(train) == 0:
        raise ConfigError(f"dataset hf: {where} training split holds no rows")
    y, ty, classes, names = _labels(cfg, train, test, where, datasets)
    groups = _groups(cfg, train, where)
    if kind == "image":
        size = cfg["data.image_size"]
        arrays, modes = _images(train, column, size, where)
        test_arrays, test_modes = _images(test, column, size, f"{where} (test split)") if test is not None else ([], [])
        gray = all(m == "L" for m in modes + test_modes)
        x = _stack(arrays, gray, root, "hf")
        tx = _stack(test_arrays, gray, root, "hf") if test_arrays else None
        if tx is not None and tx.shape[1:] != x.shape[1:]:
            raise ConfigError(f"dataset hf: {where} test images are {tuple(tx.shape[1:])}, training images {tuple(x.shape[1:])}; set data.image_size")
    else:
        from featherfl.data.text import check_text_model, token_ids

        check_text_model(cfg, "hf")
        texts = _texts(train, column, where)
        x, tx = token_ids(cfg, texts, _texts(test, column, f"{where} (test split)") if test is not None else None)
    if tx is None:
        x, y, tx, ty, groups = _split(cfg, x, y, groups)
        split_note += f", {cfg['data.test_fraction']:.0%} held out"
    shown = f", classes {', '.join(map(str, names[:10]))}{' ...' if len(names) > 10 else ''}" if names else f", {classes} classes"
    what = f"{kind} column {column!r}" + (f", <= {x.shape[1]} tokens" if kind == "text" else "")
    note = f"hf {root} ({split_note}): {len(y)} train / {len(ty)} test, {what}{shown}"
    ds = Dataset("hf", x, y, tx, ty, classes, tuple(x.shape[1:]), note)
    ds.train_groups = groups
    return ds


register_source("hf", load_hf)
