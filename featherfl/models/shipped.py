"""Backbones shipped inside the package, named ``featherfl:<name>`` in ``model.pretrained``.

A shipped file is read only after its SHA-256 matches the one recorded here, so a
damaged or replaced file is refused in one line instead of silently training on other
weights. How each file was made, with its command, and the licence of its data are in
``featherfl/models/weights/README.md``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from featherfl.config import ConfigError

PREFIX = "featherfl:"
FOLDER = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class ShippedBackbone:
    file: str
    sha256: str
    about: str


SHIPPED = {
    "vit-tiny-mnist": ShippedBackbone(
        "vit-tiny-mnist.safetensors",
        "b381263d8531a24c30394e2ebb91eb7d50fa8067c587e1300a7329561c09863b",
        "vit-tiny pretrained on MNIST (8,000 images, classes 0-9) in the UCI digits' 8 x 8 format; for 1 x 8 x 8 inputs",
    ),
}


def is_shipped(name: str) -> bool:
    return str(name).startswith(PREFIX)


@lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, computed once per (path, size, modification time)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def shipped_path(name: str, key: str = "model.pretrained", folder: Path | None = None) -> Path:
    """The verified file behind ``featherfl:<name>``; any problem is one ConfigError line."""
    short = str(name)[len(PREFIX) :]
    entry = SHIPPED.get(short)
    if entry is None:
        raise ConfigError(f"config key '{key}': no shipped backbone {name!r}; shipped: {', '.join(PREFIX + n for n in SHIPPED)}")
    p = Path(folder or FOLDER) / entry.file
    if not p.is_file():
        raise ConfigError(f"config key '{key}': {name} needs {p}, which this install lacks; reinstall featherfl")
    st = p.stat()
    got = _digest(str(p), st.st_size, st.st_mtime_ns)
    if got != entry.sha256:
        raise ConfigError(f"config key '{key}': {p} has SHA-256 {got[:16]}..., not the shipped {entry.sha256[:16]}...; the file is damaged or was replaced: reinstall featherfl")
    return p
