"""Your own data in standard formats, read offline from ``data.dir``.

- ``imagefolder``: torchvision's ImageFolder layout, ``<dir>/train/<class>/<image>`` (and
  optionally ``<dir>/test/<class>/...``; without it ``data.test_fraction`` is held out), or
  the class folders directly in ``<dir>``. Classes are the sorted folder names. Images are
  read with Pillow; grayscale sets stay 1 channel, others become RGB; every image must have
  the same size unless ``data.image_size`` resizes them to a square.
- ``npz``: one ``.npz`` file with ``x_train``, ``y_train`` and optionally ``x_test``,
  ``y_test`` and ``client_train`` (a client id per training row). Read with
  ``allow_pickle=False``: object arrays are refused, nothing is unpickled. ``uint8`` arrays
  are pixels and are scaled to [0, 1].
- ``csv``: a ``.csv`` file (training rows) or a folder with ``train.csv`` and optionally
  ``test.csv``; a header row; the label column ``data.label_column``; optionally a client
  column ``data.client_column``; every other column a numeric feature.

A client id per training row (``client_train``, the client column) allows
``partition.name = natural``: each distinct id is one client (FEMNIST-style writers).
Every problem is a one-line ConfigError naming the file.
"""

from __future__ import annotations

import csv
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from featherfl.config import ConfigError
from featherfl.data.dataset import Dataset, register_source, stratified_split
from featherfl.data.validate import first_nonfinite_row

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _root(cfg, name: str, expect: str) -> Path:
    if not cfg["data.dir"]:
        raise ConfigError(f"dataset {name} needs data.dir: {expect}")
    p = Path(cfg["data.dir"]).expanduser()
    if not p.exists():
        raise ConfigError(f"dataset {name}: data.dir {p} does not exist; expected {expect}")
    return p


def _split(cfg, x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor | None):
    """Hold out ``data.test_fraction`` (stratified by label) when the data has no test split."""
    tr, te = stratified_split(y.numpy(), cfg["data.test_fraction"], seed=12345)
    g = groups[torch.as_tensor(tr)] if groups is not None else None
    return x[torch.as_tensor(tr)], y[torch.as_tensor(tr)], x[torch.as_tensor(te)], y[torch.as_tensor(te)], g


def _labels(values: list[str], where: str) -> tuple[torch.Tensor, list[str]]:
    names = sorted(set(values))
    if len(names) < 2:
        raise ConfigError(f"{where}: found {len(names)} class(es); need at least 2")
    index = {n: i for i, n in enumerate(names)}
    return torch.tensor([index[v] for v in values], dtype=torch.int64), names


# --- image folders ---------------------------------------------------------------------------


def _read_images(folder: Path, classes: list[str] | None, size: int) -> tuple[list[np.ndarray], list[str], list[str]]:
    from PIL import Image, UnidentifiedImageError

    found = sorted(d.name for d in folder.iterdir() if d.is_dir())
    training = classes is None  # an empty class folder in test/ is harmless: it has no rows to score
    classes = classes or found
    arrays, labels, modes = [], [], []
    for c in found:
        if c not in classes:
            raise ConfigError(f"dataset imagefolder: {folder / c} is a class the training folder does not have")
        files = sorted(f for f in (folder / c).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files and training:
            raise ConfigError(f"dataset imagefolder: class folder {folder / c} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder, or its class would silently vanish")
        for f in files:
            try:
                with warnings.catch_warnings(), Image.open(f) as im:
                    warnings.simplefilter("error", Image.DecompressionBombWarning)
                    im.load()
                    modes.append("L" if im.mode in ("1", "L", "I;16", "I") else "RGB")
                    img = im.convert(modes[-1])
                    if size:
                        img = img.resize((size, size))
                    arrays.append(np.asarray(img, dtype=np.uint8))
            except (Image.DecompressionBombError, Image.DecompressionBombWarning):
                raise ConfigError(f"dataset imagefolder: {f} claims more pixels than Pillow's safety limit ({Image.MAX_IMAGE_PIXELS:,}); a decompression bomb or a huge image, refused") from None
            except (UnidentifiedImageError, OSError) as e:
                raise ConfigError(f"dataset imagefolder: {f} is not a readable image ({e.__class__.__name__})") from None
            labels.append(c)
    if not arrays:
        raise ConfigError(f"dataset imagefolder: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class folders under {folder}")
    return arrays, labels, modes


def _stack(arrays: list[np.ndarray], gray: bool, where: Path, name: str = "imagefolder") -> torch.Tensor:
    shapes = {a.shape[:2] for a in arrays}
    if len(shapes) > 1:
        raise ConfigError(f"dataset {name}: images under {where} have different sizes {sorted(shapes)[:3]}; set data.image_size to resize them")
    out = []
    for a in arrays:
        if gray:
            a = a if a.ndim == 2 else a.mean(axis=2)
            out.append(a[None])
        else:
            a = np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a
            out.append(a.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out).astype(np.float32) / 255.0)


def load_imagefolder(cfg) -> Dataset:
    root = _root(cfg, "imagefolder", "a folder with train/<class>/<image> (and optionally test/<class>/...), or class folders directly")
    if not root.is_dir():
        raise ConfigError(f"dataset imagefolder: data.dir {root} is not a folder")
    size = cfg["data.image_size"]
    train_dir = root / "train" if (root / "train").is_dir() else root
    arrays, names, modes = _read_images(train_dir, None, size)
    classes = sorted(set(names))
    test_arrays, test_names, test_modes = ([], [], [])
    if (root / "test").is_dir():
        test_arrays, test_names, test_modes = _read_images(root / "test", classes, size)
    gray = all(m == "L" for m in modes + test_modes)
    x = _stack(arrays, gray, train_dir)
    index = {c: i for i, c in enumerate(classes)}
    if len(classes) < 2:
        raise ConfigError(f"dataset imagefolder: {train_dir} has {len(classes)} class folder(s); need at least 2")
    y = torch.tensor([index[n] for n in names], dtype=torch.int64)
    if test_arrays:
        tx = _stack(test_arrays, gray, root / "test")
        if tx.shape[1:] != x.shape[1:]:
            raise ConfigError(f"dataset imagefolder: test images are {tuple(tx.shape[1:])}, training images {tuple(x.shape[1:])}; set data.image_size")
        ty = torch.tensor([index[n] for n in test_names], dtype=torch.int64)
        note_split = "its test/ folder"
    else:
        x, y, tx, ty, _ = _split(cfg, x, y, None)
        note_split = f"{cfg['data.test_fraction']:.0%} held out"
    note = f"imagefolder {root}: {len(y)} train / {len(ty)} test ({note_split}), classes {', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}"
    return Dataset("imagefolder", x, y, tx, ty, len(classes), tuple(x.shape[1:]), note)


# --- npz --------------------------------------------------------------------------------------


class NpzArrays:
    """The arrays of an ``.npz`` file, memory-mapped where the file allows it.

    ``np.savez`` stores each array uncompressed (ZIP_STORED) as an ``.npy`` file inside the zip;
    such a member is mapped straight from the file (copy-on-write: nothing is read until used,
    nothing is written back), so a training array larger than the free memory can still be
    partitioned and sampled. Compressed members (``np.savez_compressed``) are read as
    ``np.load`` reads them. Object arrays are refused either way: nothing is unpickled.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._zip = zipfile.ZipFile(self.path)
        self._members = {n[:-4]: n for n in self._zip.namelist() if n.endswith(".npy")}
        self.files = list(self._members)
        self._loaded = None

    def __contains__(self, key: str) -> bool:
        return key in self._members

    def __getitem__(self, key: str) -> np.ndarray:
        info = self._zip.getinfo(self._members[key])
        if info.compress_type == zipfile.ZIP_STORED:
            mapped = self._mapped(info)
            if mapped is not None:
                return mapped
        from featherfl.checks import refuse_population

        refuse_population(info.file_size, f"dataset npz: {self.path} array {key!r} (compressed, so read whole)", "an uncompressed file (numpy.savez, which featherfl memory-maps) or a smaller one")
        if self._loaded is None:
            self._loaded = np.load(self.path, allow_pickle=False)
        return self._loaded[key]

    def _mapped(self, info: zipfile.ZipInfo) -> np.ndarray | None:
        """The member as a memory map, or None where its header is not a plain ``.npy`` one."""
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04":
                return None
            name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
            start = info.header_offset + 30 + name_len + extra_len
            f.seek(start)
            try:
                version = np.lib.format.read_magic(f)
                shape, fortran, dtype = _npy_header(f, version)
            except ValueError:
                return None
            offset = f.tell()
        if dtype.hasobject:
            raise ValueError("object array")
        if fortran or offset - start + int(np.prod(shape)) * dtype.itemsize != info.file_size:
            return None
        if int(np.prod(shape)) == 0:
            return None
        # The offset inside a zip is rarely a multiple of 4: an unaligned map is fine for what
        # reads it here (checks and the per-round gather, which copies into aligned tensors).
        return np.memmap(self.path, dtype=dtype, mode="c", offset=offset, shape=shape)

    def close(self) -> None:
        self._zip.close()
        if self._loaded is not None:
            self._loaded.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _npy_header(f, version: tuple[int, int]):
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"npy version {version}")


def _array(z, key: str, path: Path) -> np.ndarray:
    try:
        a = z[key]
    except ValueError:
        raise ConfigError(f"dataset npz: {path} array {key!r} holds Python objects; featherfl never unpickles data (save numeric arrays)") from None
    if a.dtype == object:
        raise ConfigError(f"dataset npz: {path} array {key!r} holds Python objects")
    return a


def _features(a: np.ndarray, key: str, path: Path) -> tuple[torch.Tensor, Callable[[int, int], None] | None]:
    """The checked float32 rows of ``a`` and, where they are the memory-mapped file's own bytes,
    the function that lets go of their pages (:func:`_page_releaser`; None otherwise)."""
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ConfigError(f"dataset npz: {path} array {key!r} is {a.dtype}, expected numbers")
    if a.ndim < 2:
        raise ConfigError(f"dataset npz: {path} array {key!r} has shape {a.shape}; expected (samples, features...)")
    # float32 data (the common case, and what a memory-mapped file holds) is used as it is: no copy
    t = torch.from_numpy(a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32, copy=False))
    release = _page_releaser(a) if t.data_ptr() == a.ctypes.data else None
    if first_nonfinite_row(t, after_block=release) is not None:  # a block at a time: no mask the size of the data
        raise ConfigError(f"dataset npz: {path} array {key!r} holds NaN or infinite values")
    return t, release


def _page_releaser(a: np.ndarray):
    """For a memory-mapped array: a function that lets go of the pages of rows [start, stop) once
    read. They are clean copies of the file (nothing was written), so the kernel drops them and
    maps them again if a round asks for those rows: checking the training array does not make
    all of it resident at once. (A round's gather maps the page-cache block around each client's
    rows, so a long run can still map much of the file: clean pages the kernel may reclaim.)"""
    import mmap

    m = getattr(a, "_mmap", None)
    if not isinstance(m, mmap.mmap) or not hasattr(m, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    row_bytes = a.strides[0]
    first = int(getattr(a, "offset", 0)) % mmap.ALLOCATIONGRANULARITY  # where np.memmap put the array inside its map
    page = mmap.PAGESIZE

    def release(start: int, stop: int) -> None:
        lo = (first + start * row_bytes) // page * page
        hi = min(len(m), first + stop * row_bytes)
        if hi > lo:
            try:
                m.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):
                pass

    return release


def _int_labels(a: np.ndarray, key: str, path: Path, n: int) -> torch.Tensor:
    from featherfl.data.validate import label_dtype_problem

    if a.dtype.kind in "US" and key != "client_train":
        raise ConfigError(label_dtype_problem(a, f"dataset npz: {path} array {key!r}"))
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer) or len(a) != n:
        raise ConfigError(f"dataset npz: {path} array {key!r} must be {n} integers (one per row), got {a.dtype} {a.shape}")
    if len(a) and a.min() < 0:
        raise ConfigError(f"dataset npz: {path} array {key!r} has negative values")
    return torch.from_numpy(a.astype(np.int64, copy=False))


def load_npz(cfg) -> Dataset:
    path = _root(cfg, "npz", "an .npz file with x_train and y_train (optionally x_test, y_test, client_train)")
    try:
        z = NpzArrays(path)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ConfigError(f"dataset npz: cannot read {path} as .npz ({e.__class__.__name__})") from None
    with z:
        missing = [k for k in ("x_train", "y_train") if k not in z.files]
        if missing:
            raise ConfigError(f"dataset npz: {path} lacks {', '.join(missing)} (it has {', '.join(z.files) or 'nothing'})")
        x, release = _features(_array(z, "x_train", path), "x_train", path)
        y = _int_labels(_array(z, "y_train", path), "y_train", path, len(x))
        groups = _int_labels(_array(z, "client_train", path), "client_train", path, len(x)) if "client_train" in z.files else None
        if "x_test" in z.files:
            tx = _features(_array(z, "x_test", path), "x_test", path)[0]
            if "y_test" not in z.files:
                raise ConfigError(f"dataset npz: {path} has x_test but no y_test")
            ty = _int_labels(_array(z, "y_test", path), "y_test", path, len(tx))
            if tx.shape[1:] != x.shape[1:]:
                raise ConfigError(f"dataset npz: {path} x_test rows are {tuple(tx.shape[1:])}, x_train rows {tuple(x.shape[1:])}")
        else:
            x, y, tx, ty, groups = _split(cfg, x, y, groups)
    classes = int(max(int(y.max()), int(ty.max()) if len(ty) else 0)) + 1
    ds = Dataset("npz", x, y, tx, ty, classes, tuple(x.shape[1:]), f"npz {path}: {len(y)} train / {len(ty)} test, {classes} classes")
    ds.train_groups = groups
    ds.inputs_checked = True  # _features checked every split, block by block
    if "x_test" in z.files:  # x_train is the file's rows as they are (not split here): its pages can be let go of by row
        ds.train_pages = release
    return ds


# --- csv --------------------------------------------------------------------------------------


def _read_csv(path: Path, label: str, client: str) -> tuple[torch.Tensor, list[str], list[str] | None, list[str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"dataset csv: cannot read {path} ({e.__class__.__name__})") from None
    if len(rows) < 2:
        raise ConfigError(f"dataset csv: {path} needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if label not in header:
        raise ConfigError(f"dataset csv: {path} has no label column {label!r} (data.label_column); columns: {', '.join(header[:12])}")
    if client and client not in header:
        raise ConfigError(f"dataset csv: {path} has no client column {client!r} (data.client_column)")
    li, ci = header.index(label), (header.index(client) if client else None)
    feature_cols = [i for i in range(len(header)) if i not in (li, ci)]
    if not feature_cols:
        raise ConfigError(f"dataset csv: {path} has no feature columns besides {label!r}")
    feats, labels, clients = [], [], []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ConfigError(f"dataset csv: {path} line {n} has {len(row)} cells, the header {len(header)}")
        try:
            values = [float(row[i]) for i in feature_cols]
        except ValueError:
            bad = next(i for i in feature_cols if not _is_number(row[i]))
            raise ConfigError(f"dataset csv: {path} line {n}, column {header[bad]!r}: {row[bad][:40]!r} is not a number") from None
        if not all(np.isfinite(values)):
            raise ConfigError(f"dataset csv: {path} line {n} holds NaN or infinite values")
        if not row[li].strip():
            raise ConfigError(f"dataset csv: {path} line {n}: the label cell ({label!r}) is blank; give every row a label or remove the row")
        feats.append(values)
        labels.append(row[li].strip())
        if ci is not None:
            clients.append(row[ci].strip())
    return torch.tensor(feats, dtype=torch.float32), labels, (clients if ci is not None else None), [header[i] for i in feature_cols]


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def load_csv(cfg) -> Dataset:
    root = _root(cfg, "csv", "a .csv file with a header row, or a folder with train.csv (and optionally test.csv)")
    train = root / "train.csv" if root.is_dir() else root
    if not train.is_file():
        raise ConfigError(f"dataset csv: {train} not found")
    label, client = cfg["data.label_column"], cfg["data.client_column"]
    x, names, clients, columns = _read_csv(train, label, client)
    y, classes = _labels(names, f"dataset csv: {train} column {label!r}")
    groups = None
    if clients is not None:
        ids = {c: i for i, c in enumerate(sorted(set(clients)))}
        groups = torch.tensor([ids[c] for c in clients], dtype=torch.int64)
    test = root / "test.csv" if root.is_dir() else None
    if test is not None and test.is_file():
        tx, tnames, _, tcolumns = _read_csv(test, label, client)
        if tcolumns != columns:
            raise ConfigError(f"dataset csv: {test} has feature columns {tcolumns[:5]}..., {train} has {columns[:5]}...")
        unknown = sorted(set(tnames) - set(classes))
        if unknown:
            raise ConfigError(f"dataset csv: {test} has labels {unknown[:5]} that {train} does not")
        index = {c: i for i, c in enumerate(classes)}
        ty = torch.tensor([index[v] for v in tnames], dtype=torch.int64)
    else:
        x, y, tx, ty, groups = _split(cfg, x, y, groups)
    ds = Dataset("csv", x, y, tx, ty, len(classes), (x.shape[1],), f"csv {train}: {len(y)} train / {len(ty)} test, {x.shape[1]} features, classes {', '.join(classes[:10])}")
    ds.train_groups = groups
    return ds


register_source("imagefolder", load_imagefolder)
register_source("npz", load_npz)
register_source("csv", load_csv)
