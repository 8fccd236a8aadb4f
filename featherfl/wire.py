"""Payload <-> bytes codec, validation of received payloads, and the byte ledger.

Wire format (little endian), chosen so the header stays small next to the data:

    b"FF" | version u8 | round u32 | run u32 | kind_len u8 | kind ascii
          | meta_len u16 | meta JSON (scalar fields) | safetensors blob (tensor fields)

Tensors travel as safetensors, scalars as a short JSON object: nothing on the
wire is ever unpickled. ``decode`` checks every received payload against what
the receiver expects (kind, round, run, field names, dtypes, shapes, finite
values, size) and raises :class:`PayloadError` with a short reason that the
engine counts per reason in ``clients_rejected``.

Every byte the ledger records is ``len(encode(payload))``: no formulas.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.numpy import save as np_save
from safetensors.torch import save as st_save

MAGIC = b"FF"
VERSION = 1
_FIXED = struct.Struct("<2sBIIB")  # magic, version, round, run, kind_len
_META_LEN = struct.Struct("<H")
MAX_META = 16_384
DEFAULT_MAX_BYTES = 256 * 2**20

_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
#: dtypes whose tensors safetensors' numpy writer takes (numpy has no bfloat16)
_NUMPY_OK = frozenset(_DTYPES.values()) - {torch.bfloat16}


class PayloadError(ValueError):
    """A received payload is malformed or not what was expected. ``reason`` is a short tag."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Payload:
    """Base for every message. Subclasses are frozen dataclasses with a ``KIND`` tag.

    Fields annotated as tensors travel in safetensors; ``int``, ``float``,
    ``str``, ``bool`` and lists of ints/floats travel in the JSON meta block.
    ``CATEGORY`` tags the ledger line (weights, seeds, scalars, logits,
    samples, generator...).
    """

    KIND: ClassVar[str] = ""
    CATEGORY: ClassVar[str] = "weights"

    def ledger_parts(self, size: int) -> list[tuple[str, int]]:
        """How the ``size`` encoded bytes of this payload split over ledger categories
        (one line under ``CATEGORY`` unless a payload carries another inside it)."""
        return [(self.CATEGORY, size)]

    def tensor_fields(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}


@dataclass(frozen=True)
class TensorSpec:
    """What a received tensor must look like. ``None`` in ``shape`` = any size (bounded by ``max_elems``)."""

    dtype: str = "float32"
    shape: tuple[int | None, ...] = ()
    finite: bool = True
    max_abs: float | None = None
    max_elems: int = 2**28
    min_value: float | None = None
    max_value: float | None = None


@dataclass(frozen=True)
class ScalarSpec:
    type: str = "int"  # int | float | str | bool | list[int] | list[float]
    min: float | None = None
    max: float | None = None
    max_len: int = 4096


@dataclass(frozen=True)
class Spec:
    """The receiver's expectation for one payload kind."""

    cls: type
    tensors: Mapping[str, TensorSpec]
    scalars: Mapping[str, ScalarSpec] = dataclasses.field(default_factory=dict)
    max_bytes: int = DEFAULT_MAX_BYTES


_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


#: (field names, dtypes, shapes) -> (the safetensors header, the fields in the order of their data),
#: or None where that form did not give safetensors' own bytes. A header depends on nothing else.
_LAYOUTS: dict[tuple, tuple[bytes, tuple[str, ...]] | None] = {}
_MAX_LAYOUTS = 1024  # payloads whose shapes vary (compressed uplinks) stop adding past this


def _blob(tensors: dict[str, torch.Tensor]) -> bytes:
    """The tensors as one safetensors blob. safetensors' numpy writer makes the same bytes as its
    torch one at a fraction of the per-call cost (what a cohort of small replies pays); dtypes
    numpy lacks (bfloat16) take the torch writer. After the first payload of a layout, its header
    is reused and only the data is written (the bytes checked equal to the writer's, once)."""
    if not all(t.dtype in _NUMPY_OK for t in tensors.values()):
        return st_save(tensors)
    arrays = {k: t.numpy() for k, t in tensors.items()}
    key = tuple((k, a.dtype.str, a.shape) for k, a in arrays.items())
    layout = _LAYOUTS.get(key, False)
    if layout:
        header, order = layout
        return b"".join([header, *(arrays[k].data for k in order)])
    blob = np_save(arrays)
    if layout is False and len(_LAYOUTS) < _MAX_LAYOUTS:
        _LAYOUTS[key] = _layout_of(blob, arrays)
    return blob


def _layout_of(blob: bytes, arrays: dict) -> tuple[bytes, tuple[str, ...]] | None:
    """(header, fields in data order) of a blob the writer made from ``arrays``, if header plus the
    arrays' bytes in that order is that blob exactly; else None (the writer is then always used)."""
    try:
        (n,) = struct.unpack_from("<Q", blob, 0)
        offsets = json.loads(blob[8 : 8 + n])
        order = tuple(sorted(arrays, key=lambda k: offsets[k]["data_offsets"][0]))
        header = blob[: 8 + n]
        if b"".join([header, *(arrays[k].data for k in order)]) == blob:
            return header, order
    except (ValueError, KeyError, TypeError, struct.error, BufferError):
        pass
    return None


def encode(payload: Payload, round: int = 0, run: int = 0) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for name in _field_names(type(payload)):
        v = getattr(payload, name)
        if isinstance(v, torch.Tensor):
            tensors[name] = v.detach().contiguous().cpu()
        elif isinstance(v, (list, tuple)):
            meta[name] = list(v)
        else:
            meta[name] = v
    kind = payload.KIND.encode("ascii")
    meta_bytes = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode() if meta else b""
    blob = _blob(tensors) if tensors else b""
    return b"".join(
        (_FIXED.pack(MAGIC, VERSION, round & 0xFFFFFFFF, run & 0xFFFFFFFF, len(kind)), kind, _META_LEN.pack(len(meta_bytes)), meta_bytes, blob)
    )


def peek(data: bytes) -> tuple[str, int, int]:
    """(kind, round, run) of an encoded payload, validating only the envelope."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PayloadError("not-bytes", type(data).__name__)
    data = bytes(data)
    if len(data) < _FIXED.size + _META_LEN.size:
        raise PayloadError("truncated", f"{len(data)} bytes")
    magic, version, rnd, run, klen = _FIXED.unpack_from(data, 0)
    if magic != MAGIC:
        raise PayloadError("bad-magic")
    if version != VERSION:
        raise PayloadError("bad-version", str(version))
    off = _FIXED.size
    if len(data) < off + klen + _META_LEN.size:
        raise PayloadError("truncated", "kind")
    try:
        kind = data[off : off + klen].decode("ascii")
    except UnicodeDecodeError:
        raise PayloadError("bad-kind", "not ascii") from None
    return kind, rnd, run


def _check_scalar(name: str, spec: ScalarSpec, v: Any) -> Any:
    t = spec.type
    if t == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            raise PayloadError("bad-field", f"{name} not an int")
    elif t == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise PayloadError("bad-field", f"{name} not a finite number")
        v = float(v)
    elif t == "bool":
        if not isinstance(v, bool):
            raise PayloadError("bad-field", f"{name} not a bool")
    elif t == "str":
        if not isinstance(v, str) or len(v) > spec.max_len:
            raise PayloadError("bad-field", f"{name} not a short string")
    elif t.startswith("list["):
        if not isinstance(v, list) or len(v) > spec.max_len:
            raise PayloadError("bad-field", f"{name} not a list of <= {spec.max_len}")
        inner = ScalarSpec(t[5:-1], spec.min, spec.max)
        return [_check_scalar(name, inner, x) for x in v]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if (spec.min is not None and v < spec.min) or (spec.max is not None and v > spec.max):
            raise PayloadError("out-of-range", f"{name}={v}")
    return v


def decode(
    data: bytes,
    specs: Mapping[str, Spec],
    round: int | None = None,
    run: int | None = None,
) -> Payload:
    """Decode and validate ``data`` against the expected kinds in ``specs``.

    Raises PayloadError (with ``reason``) on anything unexpected; never
    returns a payload that does not match its spec.
    """
    kind, rnd, rid = peek(data)
    data = bytes(data)
    spec = specs.get(kind)
    if spec is None:
        raise PayloadError("unexpected-kind", kind)
    if len(data) > spec.max_bytes:
        raise PayloadError("oversized", f"{len(data)} > {spec.max_bytes} bytes")
    if round is not None and rnd != (round & 0xFFFFFFFF):
        raise PayloadError("wrong-round", f"{rnd} != {round}")
    if run is not None and rid != (run & 0xFFFFFFFF):
        raise PayloadError("wrong-run", f"{rid} != {run}")
    off = _FIXED.size + len(kind.encode())
    (mlen,) = _META_LEN.unpack_from(data, off)
    off += _META_LEN.size
    if mlen > MAX_META or len(data) < off + mlen:
        raise PayloadError("truncated", "meta")
    meta: dict[str, Any] = {}
    if mlen:
        try:
            meta = json.loads(data[off : off + mlen].decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise PayloadError("bad-meta", "not JSON") from None
        if not isinstance(meta, dict):
            raise PayloadError("bad-meta", "not an object")
    off += mlen
    if set(meta) != set(spec.scalars):
        raise PayloadError("bad-fields", f"meta fields {sorted(meta)} != {sorted(spec.scalars)}")
    values: dict[str, Any] = {k: _check_scalar(k, spec.scalars[k], meta[k]) for k in spec.scalars}
    blob = data[off:]
    tensors: dict[str, torch.Tensor] = {}
    if spec.tensors:
        if not blob:
            raise PayloadError("truncated", "no tensors")
        try:
            tensors = st_load(blob)
        except (SafetensorError, Exception) as e:  # safetensors raises several types on garbage
            raise PayloadError("bad-tensors", type(e).__name__) from None
    elif blob:
        raise PayloadError("trailing-bytes", f"{len(blob)}")
    if set(tensors) != set(spec.tensors):
        raise PayloadError("bad-fields", f"tensors {sorted(tensors)} != {sorted(spec.tensors)}")
    for name, ts in spec.tensors.items():
        t = tensors[name]
        if t.dtype != _DTYPES[ts.dtype]:
            raise PayloadError("wrong-dtype", f"{name}: {t.dtype} != {ts.dtype}")
        if len(t.shape) != len(ts.shape) or any(e is not None and e != s for e, s in zip(ts.shape, t.shape)):
            raise PayloadError("wrong-shape", f"{name}: {tuple(t.shape)} != {ts.shape}")
        if t.numel() > ts.max_elems:
            raise PayloadError("oversized", f"{name}: {t.numel()} elements")
        if t.is_floating_point() and t.numel() and (ts.finite or ts.max_abs is not None):
            # one reduction serves both checks: the largest magnitude is NaN when any entry is NaN
            # and infinite when any is infinite, so it is finite exactly when every entry is
            peak = float(t.abs().max())
            if ts.finite and not math.isfinite(peak):
                raise PayloadError("non-finite", name)
            if ts.max_abs is not None and peak > ts.max_abs:
                raise PayloadError("out-of-range", f"{name}: |x| > {ts.max_abs:g}")
        if t.numel() and ts.min_value is not None and float(t.min()) < ts.min_value:
            raise PayloadError("out-of-range", f"{name} < {ts.min_value}")
        if t.numel() and ts.max_value is not None and float(t.max()) > ts.max_value:
            raise PayloadError("out-of-range", f"{name} > {ts.max_value}")
        values[name] = t
    try:
        return spec.cls(**values)
    except TypeError as e:
        raise PayloadError("bad-fields", str(e)) from None


class Ledger:
    """Counts encoded bytes per round, direction, client and category."""

    def __init__(self) -> None:
        self.rounds: dict[int, dict[str, Any]] = {}

    def _r(self, rnd: int) -> dict[str, Any]:
        return self.rounds.setdefault(
            rnd, {"up": 0, "down": 0, "per_client_up": defaultdict(int), "per_client_down": defaultdict(int), "category": defaultdict(int)}
        )

    def record(self, rnd: int, direction: str, cid: int, nbytes: int, category: str) -> None:
        if direction not in ("up", "down"):
            raise ValueError(direction)
        r = self._r(rnd)
        r[direction] += nbytes
        r["per_client_" + direction][cid] += nbytes
        r["category"][f"{direction}_{category}"] += nbytes

    def round_totals(self, rnd: int) -> dict[str, Any]:
        r = self._r(rnd)
        return {
            "bytes_up": r["up"],
            "bytes_down": r["down"],
            "bytes_by_category": dict(sorted(r["category"].items())),
            "bytes_up_per_client": {str(k): v for k, v in sorted(r["per_client_up"].items())},
            "bytes_down_per_client": {str(k): v for k, v in sorted(r["per_client_down"].items())},
        }
