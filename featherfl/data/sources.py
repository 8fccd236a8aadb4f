"""Data sources. Each returns a :class:`Dataset` with a train and a test split.

``digits`` (scikit-learn's bundled 8x8 digits) is the embedded default and needs
no files. ``mnist`` / ``fashion-mnist`` read the original IDX ``.gz`` files and
``cifar10`` the original binary release from ``data.dir`` (or download them when
online); ``synthetic`` is a seeded generator for tests.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import zlib
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from featherfl.config import ConfigError
from featherfl.data.dataset import SOURCES as _SOURCES
from featherfl.data.dataset import Dataset, register_source, stratified_split, stratified_subset

__all__ = ["Dataset", "register_source", "stratified_split", "stratified_subset", "source_names", "load_dataset", "is_text"]


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as (images N x 8 x 8, labels N).

    Read straight from the CSV inside the installed scikit-learn package, which is what
    ``load_digits`` reads too, without importing scikit-learn itself (about 2.5 s of
    start-up for every run and every Flower ClientApp process)."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                raw = np.loadtxt(f, delimiter=",", dtype=np.float64)
            return raw[:, :-1].reshape(-1, 8, 8), raw[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits  # a packaging we do not know: let scikit-learn find it

    d = load_digits()
    return d.images, d.target


def _digits(cfg) -> Dataset:
    images, target = digits_arrays()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(target, dtype=torch.int64)
    tr, te = stratified_split(target, cfg["data.test_fraction"], seed=12345)
    return Dataset("digits", x[tr], y[tr], x[te], y[te], 10, (1, 8, 8), "scikit-learn digits, 80/20 stratified split (seed 12345)")


def _synthetic(cfg) -> Dataset:
    """Ten Gaussian class clusters shaped as 1x8x8 images; fully determined by the run seed."""
    n = cfg["data.synthetic_samples"]
    from featherfl.checks import refuse_if_too_big, synthetic_bytes

    refuse_if_too_big(synthetic_bytes(n), f"data.synthetic_samples={n:,}")  # before the tensors exist
    g = torch.Generator().manual_seed(1_000_003 + cfg["seed"])
    centers = torch.rand(10, 1, 8, 8, generator=g)
    y = torch.arange(n) % 10
    x = (centers[y] + 0.25 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    tr, te = stratified_split(y.numpy(), cfg["data.test_fraction"], seed=cfg["seed"])
    return Dataset("synthetic", x[tr], y[tr], x[te], y[te], 10, (1, 8, 8), "seeded Gaussian clusters")


_MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}
_MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic (0,0,dtype,ndim), big-endian dims, data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        first = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise ConfigError(f"data file {path} is unreadable or corrupt ({first})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError(f"data file {path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ConfigError(f"data file {path} is truncated")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    n = int(np.prod(dims))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != n:
        raise ConfigError(f"data file {path} has {body.size} values, header says {n}")
    return body.reshape(dims)


def read_idx_pair(x_path: Path, y_path: Path, image_shape: tuple[int, int], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """An images file and its labels file, checked against each other and the dataset's format:
    images N x H x W of the expected size, labels N in [0, num_classes), the same N in both."""
    x = read_idx(x_path)
    y = read_idx(y_path)
    if x.ndim != 3 or tuple(x.shape[1:]) != tuple(image_shape):
        raise ConfigError(f"data file {x_path} holds images of shape {tuple(x.shape[1:]) if x.ndim > 1 else '(1-D)'}; expected N x {image_shape[0]} x {image_shape[1]}")
    if y.ndim != 1:
        raise ConfigError(f"data file {y_path} is not a labels file (shape {tuple(y.shape)}, expected N)")
    if len(x) != len(y):
        raise ConfigError(f"{x_path} holds {len(x)} images but {y_path.name} holds {len(y)} labels; they must match")
    if len(y) == 0:
        raise ConfigError(f"data file {y_path} holds no samples")
    if int(y.max()) >= num_classes:
        bad = int((y >= num_classes).sum())
        raise ConfigError(f"data file {y_path}: {bad} labels are >= {num_classes} (largest {int(y.max())}); expected labels 0-{num_classes - 1}")
    return x, y


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as f:
            f.write(r.read())
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"could not download {url} ({e.__class__.__name__}); offline? put the file in {dest.parent} and pass --set data.dir={dest.parent}") from None
    os.replace(tmp, dest)


def _data_dir(cfg, name: str) -> Path:
    if cfg["data.dir"]:
        return Path(cfg["data.dir"]).expanduser()
    return Path(os.environ.get("FEATHERFL_DATA", Path.home() / ".cache" / "featherfl" / "data")) / name


#: torchvision's download folders: ``<root>/MNIST/raw`` and ``<root>/FashionMNIST/raw``
_TORCHVISION_DIRS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


def _idx_layout(root: Path, name: str) -> tuple[Path, dict[str, str]]:
    """Where the IDX files are: ``root`` itself or torchvision's ``<root>/MNIST/raw``, gzipped
    (the original release) or not (what torchvision also leaves there)."""
    for folder in (root, root / _TORCHVISION_DIRS.get(name, "") / "raw"):
        for files in (_MNIST_FILES, {k: f[:-3] for k, f in _MNIST_FILES.items()}):
            if (folder / files["test_x"]).exists() and (folder / files["test_y"]).exists():
                return folder, files
    return root, _MNIST_FILES


def _mnist_like(cfg, name: str) -> Dataset:
    root, files = _idx_layout(_data_dir(cfg, name), name)
    have = {k: (root / f).exists() for k, f in files.items()}
    if not (have["test_x"] and have["test_y"]):
        if cfg["data.dir"] or not cfg["data.download"]:
            raise ConfigError(
                f"{name}: no {_MNIST_FILES['test_x']} / {_MNIST_FILES['test_y']} (gzipped or not) in {root} or {root / _TORCHVISION_DIRS.get(name, '') / 'raw'} (torchvision's layout); download the original IDX files there or set data.dir"
            )
        for k, f in _MNIST_FILES.items():
            _download(_MIRRORS[name] + f, root / f)
        have = {k: True for k in _MNIST_FILES}
    tx, ty = read_idx_pair(root / files["test_x"], root / files["test_y"], (28, 28), 10)
    to_x = lambda a: torch.tensor(a, dtype=torch.float32).unsqueeze(1) / 255.0  # noqa: E731
    if have["train_x"] != have["train_y"]:
        missing = files["train_y"] if have["train_x"] else files["train_x"]
        raise ConfigError(f"{name}: {root} has one training file but not {missing}; add it or remove the other")
    if have["train_x"] and have["train_y"]:
        trx, try_ = read_idx_pair(root / files["train_x"], root / files["train_y"], (28, 28), 10)
        note = "official train/test split"
        ds = Dataset(name, to_x(trx), torch.tensor(try_, dtype=torch.int64), to_x(tx), torch.tensor(ty, dtype=torch.int64), 10, (1, 28, 28), note)
    else:
        tr, te = stratified_split(ty, cfg["data.test_fraction"], seed=12345)
        note = f"only the t10k set found: split {len(tr)}/{len(te)} stratified (seed 12345)"
        x, y = to_x(tx), torch.tensor(ty, dtype=torch.int64)
        ds = Dataset(name, x[tr], y[tr], x[te], y[te], 10, (1, 28, 28), note)
    return ds


CIFAR10_BINARY_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


def _cifar10(cfg) -> Dataset:
    """The binary CIFAR-10 release (cifar-10-binary.tar.gz or its extracted folder): no pickle involved."""
    root = _data_dir(cfg, "cifar10")
    folder = root / "cifar-10-batches-bin"
    tar = root / "cifar-10-binary.tar.gz"
    if not folder.exists():
        if not tar.exists():
            if cfg["data.dir"] or not cfg["data.download"]:
                pickled = [p for p in (root / "cifar-10-batches-py", root / "cifar-10-python.tar.gz") if p.exists()]
                if pickled:  # what torchvision downloads: Python pickles, which would run code when loaded
                    raise ConfigError(
                        f"cifar10: {pickled[0]} is the Python (pickle) release, which featherfl never loads (unpickling a file can run code); "
                        f"put the binary release {CIFAR10_BINARY_URL} (or its extracted cifar-10-batches-bin) in {root}"
                    )
                raise ConfigError(f"cifar10: neither {folder} nor {tar} found; get the binary version of CIFAR-10 ({CIFAR10_BINARY_URL}) there or set data.dir")
            _download(CIFAR10_BINARY_URL, tar)
        staging = root / ".cifar10-extracting"
        shutil.rmtree(staging, ignore_errors=True)
        try:  # extract aside, then rename: a corrupt or cut-off archive leaves no half folder behind
            with tarfile.open(tar) as t:
                t.extractall(staging, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise ConfigError(f"cifar10: {tar} is corrupt or truncated ({e.__class__.__name__}); delete it and download it again") from None
        if (staging / folder.name).is_dir():
            os.replace(staging / folder.name, folder)
        shutil.rmtree(staging, ignore_errors=True)
        if not folder.exists():
            raise ConfigError(f"cifar10: {tar} holds no {folder.name} folder")

    def read(names):
        xs, ys = [], []
        for n in names:
            p = folder / n
            if not p.exists():
                raise ConfigError(f"cifar10: missing {p}")
            raw = np.fromfile(p, dtype=np.uint8)
            if raw.size % 3073:
                raise ConfigError(f"cifar10: {p} is corrupt (size {raw.size})")
            raw = raw.reshape(-1, 3073)
            if raw.shape[0] == 0 or int(raw[:, 0].max()) >= 10:
                raise ConfigError(f"cifar10: {p} is empty or holds labels >= 10; not the CIFAR-10 binary format")
            ys.append(raw[:, 0].astype(np.int64))
            xs.append(raw[:, 1:].reshape(-1, 3, 32, 32))
        return torch.tensor(np.concatenate(xs), dtype=torch.float32) / 255.0, torch.tensor(np.concatenate(ys))

    trx, try_ = read([f"data_batch_{i}.bin" for i in range(1, 6)])
    tex, tey = read(["test_batch.bin"])
    return Dataset("cifar10", trx, try_, tex, tey, 10, (3, 32, 32), "official binary release")


_SOURCES.update(
    {
    "digits": _digits,
    "synthetic": _synthetic,
    "mnist": lambda cfg: _mnist_like(cfg, "mnist"),
    "fashion-mnist": lambda cfg: _mnist_like(cfg, "fashion-mnist"),
    "cifar10": _cifar10,
    }
)


#: Sources that register themselves when their module is imported (the text extra).
_LAZY_SOURCES = ("sst2", "agnews")


def source_names() -> list[str]:
    return sorted(set(_SOURCES) | set(_LAZY_SOURCES))


def load_dataset(cfg) -> Dataset:
    name = cfg["dataset"]
    if name not in _SOURCES:
        try:
            import featherfl.data.text  # noqa: F401  (registers sst2/agnews)
        except ImportError as e:
            raise ConfigError(f"dataset {name!r} needs the text extra: pip install 'featherfl[text]' ({e})") from None
    if name not in _SOURCES:
        raise ConfigError(f"config key 'dataset': got {name!r}, expected one of {', '.join(sorted(_SOURCES))}")
    from featherfl.data.validate import validate_dataset

    ds = validate_dataset(_SOURCES[name](cfg), name)  # every reader's output, one set of checks
    if cfg["data.max_train"]:
        keep = stratified_subset(ds.train_y.numpy(), cfg["data.max_train"], seed=cfg["seed"])
        ds.train_x, ds.train_y = ds.train_x[keep], ds.train_y[keep]
        ds.train_pages = None  # a copy of some rows now, not the file's
        if ds.train_groups is not None:
            ds.train_groups = ds.train_groups[keep]
    if cfg["data.max_test"]:
        keep = stratified_subset(ds.test_y.numpy(), cfg["data.max_test"], seed=cfg["seed"])
        ds.test_x, ds.test_y = ds.test_x[keep], ds.test_y[keep]
    return ds


def is_text(cfg) -> bool:
    """Whether ``cfg``'s data are token ids for a text encoder: SST-2, AG News, or an ``hf``
    folder whose input column is text (read from its metadata, so every process agrees)."""
    if cfg["dataset"] in _LAZY_SOURCES:
        return True
    if cfg["dataset"] == "hf":
        from featherfl.data.hf import input_kind

        return input_kind(cfg) == "text"
    return False


import featherfl.data.files  # noqa: E402,F401  (registers imagefolder, npz, csv)
import featherfl.data.hf  # noqa: E402,F401  (registers hf)
