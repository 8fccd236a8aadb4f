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
    data, spec, off, values = _envelope(data, specs, round, run)
    return _finish(spec, data[off:], values)


def _envelope(data, specs: Mapping[str, Spec], round: int | None, run: int | None) -> tuple[bytes, Spec, int, dict[str, Any]]:
    """What :func:`decode` checks before the tensors: the envelope, the size, round and run, the
    meta block and its scalars. Returns (the bytes, their spec, where the tensors start, the scalars)."""
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
    return data, spec, off, values


def _finish(spec: Spec, blob: bytes, values: dict[str, Any]) -> Payload:
    """The tensors of :func:`decode`: the safetensors blob read and every tensor checked."""
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
        err = _layout_error(name, ts, t.dtype, tuple(t.shape))
        if err is not None:
            raise err
        if t.is_floating_point() and t.numel() and (ts.finite or ts.max_abs is not None):
            # one reduction serves both checks: the largest magnitude is NaN when any entry is NaN
            # and infinite when any is infinite, so it is finite exactly when every entry is
            err = _peak_error(name, ts, float(t.abs().max()))
            if err is not None:
                raise err
        if t.numel() and ts.min_value is not None and float(t.min()) < ts.min_value:
            raise PayloadError("out-of-range", f"{name} < {ts.min_value}")
        if t.numel() and ts.max_value is not None and float(t.max()) > ts.max_value:
            raise PayloadError("out-of-range", f"{name} > {ts.max_value}")
        values[name] = t
    return _build(spec, values)


def _layout_error(name: str, ts: TensorSpec, dtype: torch.dtype, shape: tuple[int, ...]) -> PayloadError | None:
    """A tensor's dtype, shape and size against its spec: what its values do not change."""
    if dtype != _DTYPES[ts.dtype]:
        return PayloadError("wrong-dtype", f"{name}: {dtype} != {ts.dtype}")
    if len(shape) != len(ts.shape) or any(e is not None and e != s for e, s in zip(ts.shape, shape)):
        return PayloadError("wrong-shape", f"{name}: {shape} != {ts.shape}")
    if math.prod(shape) > ts.max_elems:
        return PayloadError("oversized", f"{name}: {math.prod(shape)} elements")
    return None


def _peak_error(name: str, ts: TensorSpec, peak: float) -> PayloadError | None:
    if ts.finite and not math.isfinite(peak):
        return PayloadError("non-finite", name)
    if ts.max_abs is not None and peak > ts.max_abs:
        return PayloadError("out-of-range", f"{name}: |x| > {ts.max_abs:g}")
    return None


def _build(spec: Spec, values: dict[str, Any]) -> Payload:
    try:
        return spec.cls(**values)
    except TypeError as e:
        raise PayloadError("bad-fields", str(e)) from None


#: dtypes the batched path reads through numpy (others, and payloads with none of these, take decode)
_BATCH_DTYPES = {"F32": (torch.float32, "<f4"), "F16": (torch.float16, "<f2"), "I64": (torch.int64, "<i8"), "I32": (torch.int32, "<i4"),
                 "I16": (torch.int16, "<i2"), "I8": (torch.int8, "i1"), "U8": (torch.uint8, "u1")}


def decode_many(datas: list, specs: list[Mapping[str, Spec]], round: int | None = None, run: int | None = None) -> list[Payload | PayloadError]:
    """``decode`` of each of ``datas`` (against ``specs[i]``): its payload, or the PayloadError that
    ``decode`` raises, reason and text alike. Only faster: replies whose tensors have one layout
    (the same safetensors header and length: a cohort's uploads of one model) are read as one
    stacked array and checked by one reduction per tensor field, instead of one safetensors read
    and one reduction per reply. A layout is proven once, on its first reply, against what
    safetensors reads from it; blobs of any other form take ``decode`` itself. Every reply still
    passes every check of ``decode``, in its order. The tensors of a batch's payloads are rows of
    one stacked tensor (views: each row its own memory, the storage shared)."""
    out: list = [None] * len(datas)
    batches: dict[tuple, list] = {}  # (spec, blob header, blob length) -> [(i, data, tensors' start, scalars)]
    layouts: dict[tuple, dict | None] = {}
    envelopes: dict[tuple, tuple | PayloadError] = {}  # what _envelope made of an envelope seen before
    last = None  # (spec, key) of the last blob key made
    for i, (d, sp) in enumerate(zip(datas, specs)):
        key = _envelope_key(d, sp)
        seen = envelopes.get(key) if key is not None else None
        if seen is None:
            try:
                seen = _envelope(d, sp, round, run)[1:]
            except PayloadError as e:
                seen = e
            if key is not None:
                envelopes[key] = seen
        if isinstance(seen, PayloadError):
            out[i] = PayloadError(seen.reason, seen.detail)
            continue
        data = bytes(d)
        spec, off, scalars = seen
        values = {k: list(v) if type(v) is list else v for k, v in scalars.items()} if scalars else {}
        if last is not None and last[0] is spec and len(data) - off == last[1][2] and data.startswith(last[1][1], off):
            key = last[1]  # the previous reply's tensor header at the same place: its layout
        else:
            key = None
            if spec.tensors and len(data) >= off + 8:
                (n,) = struct.unpack_from("<Q", data, off)
                if n <= len(data) - off - 8:
                    key = (id(spec), data[off : off + 8 + n], len(data) - off)
            last = (spec, key) if key is not None else None
        if key is not None and key not in layouts:
            layouts[key] = _batch_layout(spec, data[off:], len(key[1]))
        if key is None or layouts[key] is None:
            try:
                out[i] = _finish(spec, data[off:], values)
            except PayloadError as e:
                out[i] = e
            continue
        batches.setdefault(key, []).append((i, data, off + len(key[1]), values))
    for key, items in batches.items():
        _finish_batch(layouts[key], items, out)
    return out


def _envelope_key(d, specs) -> tuple | None:
    """What :func:`_envelope`'s answer depends on: the bytes up to the end of the meta block, the
    length, and the specs (round and run are one call's). None where the bytes are not plain bytes."""
    if type(d) is not bytes or len(d) < _FIXED.size + _META_LEN.size:
        return None
    end = _FIXED.size + d[_FIXED.size - 1]
    if len(d) < end + _META_LEN.size:
        return None
    (mlen,) = _META_LEN.unpack_from(d, end)
    return (id(specs), len(d), d[: end + _META_LEN.size + mlen])


def _batch_layout(spec: Spec, blob: bytes, head: int) -> dict | None:
    """Where each tensor field lies in a safetensors ``blob`` (its header ``head`` bytes long), for
    every blob with the same header and length: proven on this one against what safetensors reads
    from it (dtypes, shapes, bytes), and only if that passes ``spec``'s checks that the values do not
    change (fields, dtypes, shapes, sizes); None otherwise (such blobs then take ``decode``)."""
    try:
        tensors = st_load(blob)
    except Exception:  # safetensors' own error, raised again by decode for each such reply
        return None
    try:
        meta = json.loads(blob[8:head])
        if set(tensors) != set(spec.tensors) or set(k for k in meta if k != "__metadata__") != set(spec.tensors):
            return None
        fields = {}
        for name, ts in spec.tensors.items():
            e, t = meta[name], tensors[name]
            torch_dtype, np_dtype = _BATCH_DTYPES[e["dtype"]]
            shape = tuple(int(x) for x in e["shape"])
            start, end = (int(x) for x in e["data_offsets"])
            if t.dtype != torch_dtype or tuple(t.shape) != shape or _layout_error(name, ts, t.dtype, shape) is not None:
                return None
            if end <= start or end - start != t.numel() * t.element_size() or t.contiguous().numpy().tobytes() != bytes(blob[head + start : head + end]):
                return None
            fields[name] = (np_dtype, shape, start, end, ts)
        return {"spec": spec, "fields": fields}
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _finish_batch(layout: dict, items: list, out: list) -> None:
    """The tensor checks of ``_finish`` for replies of one layout, on stacked arrays (see :func:`decode_many`)."""
    import numpy as np

    spec, fields = layout["spec"], layout["fields"]
    m = len(items)
    first = items[0][1]
    width = len(first) - items[0][2]
    raw = np.frombuffer(bytearray().join(memoryview(data)[start:] for _, data, start, _ in items), dtype=np.uint8).reshape(m, width)
    errors: list[PayloadError | None] = [None] * m
    stacked = {}
    for name, (np_dtype, shape, start, end, ts) in fields.items():
        cols = raw if (start, end) == (0, width) else np.ascontiguousarray(raw[:, start:end])
        t = torch.from_numpy(cols.view(np_dtype).reshape(m, *shape))
        stacked[name] = t
        numel = math.prod(shape)
        flat = t.reshape(m, -1)
        if t.is_floating_point() and numel and (ts.finite or ts.max_abs is not None):
            # the largest magnitude from the row's largest and smallest entries (no |x| copy): the same
            # value, NaN when any entry is NaN (both reductions and ``maximum`` carry NaN)
            peaks = torch.maximum(flat.amax(dim=1).abs(), flat.amin(dim=1).abs())
            for k, peak in enumerate(peaks.tolist()):
                if errors[k] is None:
                    errors[k] = _peak_error(name, ts, float(peak))
        if numel and ts.min_value is not None:
            for k, low in enumerate(flat.amin(dim=1).tolist()):
                if errors[k] is None and float(low) < ts.min_value:
                    errors[k] = PayloadError("out-of-range", f"{name} < {ts.min_value}")
        if numel and ts.max_value is not None:
            for k, high in enumerate(flat.amax(dim=1).tolist()):
                if errors[k] is None and float(high) > ts.max_value:
                    errors[k] = PayloadError("out-of-range", f"{name} > {ts.max_value}")
    rows = {name: t.unbind(0) for name, t in stacked.items()}  # each reply's row (a view)
    for k, (i, _, _, values) in enumerate(items):
        if errors[k] is not None:
            out[i] = errors[k]
            continue
        for name in fields:
            values[name] = rows[name][k]
        try:
            out[i] = _build(spec, values)
        except PayloadError as e:
            out[i] = e


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
