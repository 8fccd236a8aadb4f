"""Hostile-payload generation for every registered payload kind.

Shared by the test suite (``tests/test_hardening_fuzz.py``, driven by
hypothesis) and the decoder benchmark (``benchmarks/fuzz_decoder.py``,
100,000+ inputs per kind). A server must survive whatever a device sends:
:func:`check` decodes one input and fails loudly if the decoder raised
anything but :class:`~featherfl.wire.PayloadError`, accepted an input that a
mutation made invalid, or returned a payload that does not match its spec.

:func:`catalog` finds every payload kind by asking each registered algorithm
for its downlink and uplink specs (so a new method is fuzzed without being
listed here) and pairs each kind with a valid example synthesised from its
spec.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import struct
from dataclasses import dataclass
from typing import Any, Callable

import torch
from safetensors.torch import save as st_save

from featherfl import wire
from featherfl.wire import MAGIC, VERSION, Payload, PayloadError, ScalarSpec, Spec, TensorSpec

ROUND = 3
RUN = 0x5EED
DTYPE_CHOICES = ("float64", "float16", "bfloat16", "int64", "int32", "uint8", "bool", "int8", "float32")
_TORCH_DTYPES = {
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
    "float32": torch.float32,
}


@dataclass(frozen=True)
class Entry:
    """One payload kind as a receiver expects it, with a valid example."""

    algorithm: str
    direction: str  # "down" (the client decodes) or "up" (the server decodes)
    kind: str
    specs: dict  # kind -> Spec, everything the receiver accepts at that point
    example: Payload

    @property
    def spec(self) -> Spec:
        return self.specs[self.kind]

    @property
    def name(self) -> str:
        return f"{self.algorithm}:{self.kind}"


# --- valid examples -------------------------------------------------------------------------------


def _concrete_shape(shape: tuple, free: int = 3) -> tuple[int, ...]:
    return tuple(free if s is None else s for s in shape)


def synth_tensor(ts: TensorSpec, gen: torch.Generator) -> torch.Tensor:
    shape = _concrete_shape(ts.shape)
    lo = ts.min_value if ts.min_value is not None else (-ts.max_abs if ts.max_abs is not None else -3.0)
    hi = ts.max_value if ts.max_value is not None else (ts.max_abs if ts.max_abs is not None else 3.0)
    lo, hi = max(lo, -3.0), min(hi, 3.0)
    if lo > hi:
        lo = hi = ts.min_value if ts.min_value is not None else ts.max_value
    dt = _TORCH_DTYPES[ts.dtype]
    if dt.is_floating_point:
        return (lo + (hi - lo) * torch.rand(shape, generator=gen)).to(dt)
    if dt == torch.bool:
        return torch.rand(shape, generator=gen) < 0.5
    return torch.randint(int(math.ceil(lo)), int(math.floor(hi)) + 1, shape, generator=gen).to(dt)


def synth_scalar(ss: ScalarSpec, rng: random.Random) -> Any:
    t = ss.type
    if t.startswith("list["):
        inner = ScalarSpec(t[5:-1], ss.min, ss.max)
        return [synth_scalar(inner, rng) for _ in range(min(3, ss.max_len))]
    lo = ss.min if ss.min is not None else 0
    hi = ss.max if ss.max is not None else lo + 100
    if t == "int":
        return rng.randint(int(math.ceil(lo)), int(min(math.floor(hi), math.ceil(lo) + 1000)))
    if t == "float":
        return lo + (min(hi, lo + 10.0) - lo) * rng.random()
    if t == "bool":
        return rng.random() < 0.5
    return "x" * min(3, ss.max_len)


def synthesize(spec: Spec, seed: int = 0) -> Payload:
    """A random payload that ``spec`` accepts."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    values = {n: synth_tensor(ts, gen) for n, ts in spec.tensors.items()}
    values.update({n: synth_scalar(ss, rng) for n, ss in spec.scalars.items()})
    return spec.cls(**values)


def catalog(algorithms: list[str] | None = None, rounds: tuple[int, ...] = (1, 2)) -> list[Entry]:
    """Every payload kind of every registered algorithm, on the embedded digits data."""
    from featherfl import algorithms as registry
    from featherfl.schema import build_config
    from featherfl.experiment import prepare

    out: dict[str, Entry] = {}
    for name in algorithms or registry.names():
        cfg = build_config(overrides=[("algorithm", name), ("clients", 4), ("rounds", 2)])
        p = prepare(cfg)
        alg = p.algorithm
        client = alg.make_client()
        groups: list[tuple[str, dict]] = []
        for rnd in rounds:
            groups.append(("down", client.downlink_specs(rnd)))
            groups.append(("up", alg.uplink_specs(rnd, 0)))
            for hook in ("setup_uplink_specs",):
                if hasattr(alg, hook):
                    groups.append(("up", getattr(alg, hook)(rnd, 0)))
            if hasattr(client, "setup_downlink_specs"):
                groups.append(("down", client.setup_downlink_specs(rnd)))
        for direction, specs in groups:
            for kind, spec in (specs or {}).items():
                key = kind  # a kind shared by two methods (e.g. fedavg.down) is fuzzed once
                if key not in out:
                    out[key] = Entry(name, direction, kind, dict(specs), synthesize(spec, seed=len(out)))
    return list(out.values())


# --- raw envelopes --------------------------------------------------------------------------------


def raw_encode(kind: str | bytes, meta: bytes, blob: bytes, rnd: int = ROUND, run: int = RUN, magic: bytes = MAGIC, version: int = VERSION, kind_len: int | None = None) -> bytes:
    """An envelope built field by field, so each field can be made wrong on its own."""
    k = kind.encode("ascii") if isinstance(kind, str) else kind
    head = struct.pack("<2sBIIB", magic, version & 0xFF, rnd & 0xFFFFFFFF, run & 0xFFFFFFFF, (len(k) if kind_len is None else kind_len) & 0xFF)
    return head + k + struct.pack("<H", len(meta) & 0xFFFF) + meta + blob


_PARTS: dict[int, tuple] = {}


def _split(p: Payload) -> tuple[dict, dict, bytes, bytes]:
    """(meta, tensors, safetensors blob, valid encoding) of an example, computed once per example."""
    hit = _PARTS.get(id(p))
    if hit is None or hit[4] is not p:
        meta, tensors = {}, {}
        for f in dataclasses.fields(p):
            v = getattr(p, f.name)
            if isinstance(v, torch.Tensor):
                tensors[f.name] = v.detach().contiguous()
            else:
                meta[f.name] = list(v) if isinstance(v, (list, tuple)) else v
        hit = _PARTS[id(p)] = (meta, tensors, st_save(tensors) if tensors else b"", wire.encode(p, ROUND, RUN), p)
    return hit[:4]


def parts(p: Payload) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Fresh (meta, tensors) dicts of ``p`` that a mutation may change freely (tensors are never edited in place)."""
    meta, tensors, _, _ = _split(p)
    return dict(meta), dict(tensors)


def assemble(kind: str, meta: dict, tensors: dict, **kw) -> bytes:
    m = json.dumps(meta, separators=(",", ":")).encode() if meta else b""
    return raw_encode(kind, m, st_save(tensors) if tensors else b"", **kw)


# --- mutations --------------------------------------------------------------------------------------
# Each takes (entry, rng) and returns (bytes, reasons): the reasons a correct decoder may give,
# or None when the mutant may also be valid (random bit flips inside tensor data, for example).

Mutation = Callable[[Entry, random.Random], tuple[bytes, frozenset | None]]
_ANY_ENVELOPE = frozenset({"truncated", "bad-magic", "bad-version", "bad-kind", "unexpected-kind", "bad-meta", "bad-fields", "bad-field", "bad-tensors", "trailing-bytes", "wrong-round", "wrong-run", "oversized", "out-of-range", "wrong-dtype", "wrong-shape", "non-finite"})


def _good(e: Entry) -> bytes:
    return _split(e.example)[3]


def _blob(e: Entry) -> bytes:
    return _split(e.example)[2]


def m_random_bytes(e, rng):
    n = rng.choice((0, 1, 5, 14, 20, 64, 300, 2000))
    data = rng.randbytes(n)
    if rng.random() < 0.5:  # a valid start makes the decoder go deeper
        data = _good(e)[: rng.randint(0, 20)] + data
    return data, None


def m_truncate(e, rng):
    b = _good(e)
    return b[: rng.randrange(0, len(b))], frozenset({"truncated", "bad-meta", "bad-tensors", "bad-fields", "bad-kind", "unexpected-kind"})


def m_bitflip(e, rng):
    b = bytearray(_good(e))
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(b))
        b[i] = rng.getrandbits(8) if rng.random() < 0.5 else b[i] ^ (1 << rng.randrange(8))
    return bytes(b), None


def m_header(e, rng):
    meta, _ = parts(e.example)
    m = json.dumps(meta, separators=(",", ":")).encode() if meta else b""
    blob = _blob(e)
    which = rng.choice(("magic", "version", "round", "run", "kind", "kind_len", "meta_len"))
    if which == "magic":
        return raw_encode(e.kind, m, blob, magic=rng.choice((b"PK", b"\x80\x04", b"ff", b"\x00\x00"))), frozenset({"bad-magic"})
    if which == "version":
        return raw_encode(e.kind, m, blob, version=rng.choice((0, 2, 255))), frozenset({"bad-version"})
    if which == "round":
        return raw_encode(e.kind, m, blob, rnd=ROUND + rng.choice((-3, -1, 1, 2**20))), frozenset({"wrong-round"})
    if which == "run":
        return raw_encode(e.kind, m, blob, run=RUN ^ (1 << rng.randrange(32))), frozenset({"wrong-run"})
    if which == "kind":
        k = rng.choice(("", "x", e.kind + "x", e.kind.upper(), "fedavg.down" if e.kind != "fedavg.down" else "fd.logits", "\x00" * 3))
        return raw_encode(k, m, blob), frozenset({"unexpected-kind", "bad-kind"})
    if which == "kind_len":
        k = e.kind.encode()
        return raw_encode(k, m, blob, kind_len=len(k) + rng.choice((-2, -1, 1, 7, 200))), frozenset(_ANY_ENVELOPE)
    head = raw_encode(e.kind, b"", b"")[:-2]
    bad_len = len(m) + rng.choice((1, 17, 4000, 60000))
    return head + struct.pack("<H", bad_len & 0xFFFF) + m + blob, frozenset(_ANY_ENVELOPE)


def _with_meta(e: Entry, meta: dict, blob: bytes) -> bytes:
    return raw_encode(e.kind, json.dumps(meta, separators=(",", ":")).encode() if meta else b"", blob)


def _bounded(ss: ScalarSpec) -> bool:
    return ss.type in ("str", "bool") or ss.min is not None or ss.max is not None


def m_meta(e, rng):
    meta, tensors = parts(e.example)
    blob = _blob(e)
    which = rng.choice(("drop", "extra", "type", "range", "nan", "huge", "notdict", "deep", "badjson"))
    if which == "drop" and meta:
        meta.pop(rng.choice(sorted(meta)))
        return _with_meta(e, meta, blob), frozenset({"bad-fields", "truncated"})
    if which == "extra":
        meta["zz_" + str(rng.randrange(100))] = 1
        return _with_meta(e, meta, blob), frozenset({"bad-fields"})
    if which in ("type", "range", "nan", "huge") and meta:
        key = rng.choice(sorted(meta))
        ss = e.spec.scalars[key]
        is_list = ss.type.startswith("list[")
        if which == "type":
            meta[key] = rng.choice(({"a": 1}, None, "s" if ss.type != "str" else 5, [[1]] if is_list else [1], True if ss.type != "bool" else 1))
            return _with_meta(e, meta, blob), frozenset({"bad-field"})
        if which == "nan":
            meta[key] = [float("nan")] if is_list else rng.choice((float("nan"), float("inf"), -float("inf")))
            m = json.dumps(meta, separators=(",", ":"), allow_nan=True).encode()
            return raw_encode(e.kind, m, blob), frozenset({"bad-field", "out-of-range"})
        if which == "range" and (ss.min is not None or ss.max is not None):
            v = (math.floor(ss.min) - 1) if ss.min is not None else (math.ceil(ss.max) + 1)
            meta[key] = [v] if is_list else v
            return _with_meta(e, meta, blob), frozenset({"out-of-range", "bad-field"})
        v = rng.choice((10**30, -(10**30), 1e308))
        meta[key] = [v] * 3 if is_list else v
        return _with_meta(e, meta, blob), (frozenset({"bad-field", "out-of-range"}) if _bounded(ss) else None)
    if which == "notdict":
        return raw_encode(e.kind, rng.choice((b"[1,2]", b"3", b'"s"', b"null")), blob), frozenset({"bad-meta"})
    if which == "deep":
        d = rng.randint(500, wire.MAX_META // 2)
        return raw_encode(e.kind, b"[" * d + b"]" * d, blob), frozenset({"bad-meta"})
    return raw_encode(e.kind, rng.choice((b"{", b"\xff\xfe", b'{"a":}', b"{'a':1}")), blob), frozenset({"bad-meta"})


def _wrong_shape(ts: TensorSpec, shape: list[int], rng: random.Random) -> list[int]:
    fixed = [i for i, s in enumerate(ts.shape) if s is not None]
    how = rng.choice(("resize", "add-dim", "drop-dim"))
    if how == "resize" and fixed:
        i = rng.choice(fixed)
        shape[i] = shape[i] + 1 if shape[i] == 0 or rng.random() < 0.5 else shape[i] - 1
        return shape
    if how == "drop-dim" and len(shape) > 1:
        return shape[:-1]
    return shape + [1]


def m_tensor(e, rng):
    meta, tensors = parts(e.example)
    if not tensors:
        blob = rng.randbytes(rng.randint(1, 64))
        return assemble(e.kind, meta, {}) + blob, frozenset({"trailing-bytes", "bad-tensors"})
    name = rng.choice(sorted(tensors))
    t = tensors[name]
    ts = e.spec.tensors[name]
    which = rng.choice(("dtype", "shape", "nonfinite", "huge", "missing", "extra", "garbage"))
    if which in ("nonfinite", "huge") and (t.numel() == 0 or not (t.is_floating_point() or (ts.max_value is not None and t.dtype != torch.bool))):
        which = "dtype"
    if which == "dtype":
        d = rng.choice([d for d in DTYPE_CHOICES if d != ts.dtype])
        tensors[name] = t.to(_TORCH_DTYPES[d])
        return assemble(e.kind, meta, tensors), frozenset({"wrong-dtype"})
    if which == "shape":
        shape = _wrong_shape(ts, list(t.shape), rng)
        tensors[name] = synth_tensor(dataclasses.replace(ts, shape=tuple(shape)), torch.Generator().manual_seed(rng.getrandbits(32)))
        return assemble(e.kind, meta, tensors), frozenset({"wrong-shape", "oversized"})
    if which in ("nonfinite", "huge"):
        t = t.clone()
        i = rng.randrange(t.numel())
        if not t.is_floating_point():
            big = ts.max_value + 1
            if big > torch.iinfo(t.dtype).max:
                tensors[name] = t.to(torch.float64)
                return assemble(e.kind, meta, tensors), frozenset({"wrong-dtype"})
            t.view(-1)[i] = int(big)
            tensors[name] = t
            return assemble(e.kind, meta, tensors), frozenset({"out-of-range"})
        if which == "nonfinite":
            t.view(-1)[i] = rng.choice((float("nan"), float("inf"), -float("inf")))
            tensors[name] = t
            return assemble(e.kind, meta, tensors), (frozenset({"non-finite"}) if ts.finite else None)
        v = rng.choice((1e30, -1e30, 3e38)) if t.dtype == torch.float32 else rng.choice((6e4, -6e4))
        t.view(-1)[i] = v
        tensors[name] = t
        limit = ts.max_value if v > 0 else ts.min_value
        bounded = (ts.max_abs is not None and abs(v) > ts.max_abs) or (limit is not None and abs(v) > abs(limit))
        return assemble(e.kind, meta, tensors), (frozenset({"out-of-range"}) if bounded else None)
    if which == "missing":
        tensors.pop(name)
        return assemble(e.kind, meta, tensors), frozenset({"bad-fields", "truncated"})
    if which == "extra":
        tensors["zz_extra"] = torch.zeros(2)
        return assemble(e.kind, meta, tensors), frozenset({"bad-fields"})
    m = json.dumps(meta, separators=(",", ":")).encode() if meta else b""
    header = b'{"w":{"dtype":"F32","shape":[1000000000],"data_offsets":[0,4000000000]}}'
    junk = rng.choice((b"\x08\x00\x00\x00\x00\x00\x00\x00{}", b"\xff" * 8 + b"{", struct.pack("<Q", 2**60) + b"{}", struct.pack("<Q", len(header)) + header))
    return raw_encode(e.kind, m, junk), frozenset({"bad-tensors", "bad-fields"})


def m_oversized(e, rng):
    """A reply larger than the receiver's cap (checked before any parsing)."""
    return _good(e), frozenset({"oversized"})


MUTATIONS: dict[str, Mutation] = {
    "random-bytes": m_random_bytes,
    "truncated": m_truncate,
    "bit-flips": m_bitflip,
    "header": m_header,
    "meta": m_meta,
    "tensors": m_tensor,
    "oversized": m_oversized,
}


class DecoderBug(AssertionError):
    """The decoder crashed, accepted a known-bad input, or returned an off-spec payload."""


def check(e: Entry, mutation: str, seed: int) -> str:
    """Decode one mutant of ``e``; return the reject reason or ``"accepted"``; raise DecoderBug on a bug."""
    rng = random.Random(seed)
    data, reasons = MUTATIONS[mutation](e, rng)
    specs = e.specs
    if mutation == "oversized":
        specs = {k: dataclasses.replace(s, max_bytes=max(1, len(data) - rng.randint(1, 64))) for k, s in specs.items()}
    try:
        out = wire.decode(data, specs, round=ROUND, run=RUN)
    except PayloadError as err:
        if reasons is not None and err.reason not in reasons:
            raise DecoderBug(f"{e.name} {mutation} seed={seed}: reason {err.reason!r} ({err.detail}), expected one of {sorted(reasons)}") from None
        return err.reason
    except Exception as err:  # the bug this module exists to find
        raise DecoderBug(f"{e.name} {mutation} seed={seed}: decoder raised {type(err).__name__}: {err}") from err
    if reasons is not None:
        raise DecoderBug(f"{e.name} {mutation} seed={seed}: accepted an input that should fail with {sorted(reasons)}")
    conforms(out, specs)
    return "accepted"


def conforms(p: Payload, specs: dict) -> None:
    """Raise DecoderBug unless ``p`` satisfies its spec (an accepted payload must be safe to use)."""
    spec = specs.get(p.KIND)
    if spec is None or type(p) is not spec.cls:
        raise DecoderBug(f"decoded a {type(p).__name__} that no spec asked for")
    for name, ts in spec.tensors.items():
        t = getattr(p, name)
        if not isinstance(t, torch.Tensor) or t.dtype != _TORCH_DTYPES[ts.dtype] or len(t.shape) != len(ts.shape):
            raise DecoderBug(f"{p.KIND}.{name}: {type(t).__name__} {getattr(t, 'dtype', None)} {getattr(t, 'shape', None)} accepted")
        if any(s is not None and s != n for s, n in zip(ts.shape, t.shape)):
            raise DecoderBug(f"{p.KIND}.{name}: shape {tuple(t.shape)} accepted for {ts.shape}")
        if t.is_floating_point() and ts.finite and not bool(torch.isfinite(t).all()):
            raise DecoderBug(f"{p.KIND}.{name}: non-finite values accepted")
    for name in spec.scalars:
        if isinstance(getattr(p, name), float) and not math.isfinite(getattr(p, name)):
            raise DecoderBug(f"{p.KIND}.{name}: non-finite scalar accepted")
