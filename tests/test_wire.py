import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from featherfl import wire
from featherfl.algorithms.fedavg import WeightsUp, weights_spec
from featherfl.models import build_model, flat_state
from support.wire_overhead import header_bytes

P = 1234
SPECS = {WeightsUp.KIND: weights_spec(WeightsUp, P, "weights", with_samples=True)}


def _good(rnd=3, run=77):
    return wire.encode(WeightsUp(torch.randn(P), 50), rnd, run)


def test_roundtrip():
    w = torch.randn(P)
    out = wire.decode(wire.encode(WeightsUp(w, 50), 3, 77), SPECS, round=3, run=77)
    assert torch.equal(out.weights, w) and out.num_samples == 50


def test_fedavg_bytes_formula_and_small_header():
    model = build_model("mlp", (1, 8, 8), 10)
    w = flat_state(model)
    payload = WeightsUp(w, 143)
    n = len(wire.encode(payload, 20, 2**31))
    header = header_bytes(payload)
    assert n == 4 * w.numel() + header
    assert header <= 128


@pytest.mark.parametrize(
    "mutate,reason",
    [
        (lambda b: b[:10], "truncated"),
        (lambda b: b"XX" + b[2:], "bad-magic"),
        (lambda b: b[:-7], "bad-tensors"),
        (lambda b: b[:2] + bytes([9]) + b[3:], "bad-version"),
    ],
)
def test_malformed_bytes_rejected(mutate, reason):
    with pytest.raises(wire.PayloadError) as e:
        wire.decode(mutate(_good()), SPECS, round=3, run=77)
    assert e.value.reason == reason


def test_wrong_round_run_shape_dtype_nan_range():
    with pytest.raises(wire.PayloadError, match="wrong-round"):
        wire.decode(_good(rnd=4), SPECS, round=3, run=77)
    with pytest.raises(wire.PayloadError, match="wrong-run"):
        wire.decode(_good(run=5), SPECS, round=3, run=77)
    with pytest.raises(wire.PayloadError, match="wrong-shape"):
        wire.decode(wire.encode(WeightsUp(torch.randn(P + 1), 5), 3, 77), SPECS, round=3, run=77)
    with pytest.raises(wire.PayloadError, match="wrong-dtype"):
        wire.decode(wire.encode(WeightsUp(torch.randn(P).double(), 5), 3, 77), SPECS, round=3, run=77)
    bad = torch.randn(P)
    bad[7] = float("nan")
    with pytest.raises(wire.PayloadError, match="non-finite"):
        wire.decode(wire.encode(WeightsUp(bad, 5), 3, 77), SPECS, round=3, run=77)
    with pytest.raises(wire.PayloadError, match="out-of-range"):
        wire.decode(wire.encode(WeightsUp(torch.full((P,), 1e9), 5), 3, 77), SPECS, round=3, run=77)
    with pytest.raises(wire.PayloadError, match="out-of-range"):
        wire.decode(wire.encode(WeightsUp(torch.randn(P), 0), 3, 77), SPECS, round=3, run=77)


def test_meta_type_confusion_rejected():
    b = _good()
    # replace the JSON meta with a value of the wrong type but the same length
    kind = WeightsUp.KIND.encode()
    off = 2 + 1 + 4 + 4 + 1 + len(kind)
    (mlen,) = struct.unpack_from("<H", b, off)
    meta = b[off + 2 : off + 2 + mlen]
    forged = meta.replace(b"50", b'"5')  # now a broken/str value
    with pytest.raises(wire.PayloadError):
        wire.decode(b[: off + 2] + forged + b[off + 2 + mlen :], SPECS, round=3, run=77)


def test_unexpected_kind_and_oversize():
    with pytest.raises(wire.PayloadError, match="unexpected-kind"):
        wire.decode(_good(), {}, round=3, run=77)
    small = {WeightsUp.KIND: wire.Spec(WeightsUp, SPECS[WeightsUp.KIND].tensors, SPECS[WeightsUp.KIND].scalars, max_bytes=100)}
    with pytest.raises(wire.PayloadError, match="oversized"):
        wire.decode(_good(), small, round=3, run=77)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash(data):
    try:
        wire.decode(data, SPECS, round=3, run=77)
    except wire.PayloadError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 5000), st.integers(0, 255))
def test_bitflips_never_crash_or_pass_silently(pos, val):
    b = bytearray(_good())
    pos %= len(b)
    b[pos] = val
    try:
        out = wire.decode(bytes(b), SPECS, round=3, run=77)
    except wire.PayloadError:
        return
    assert out.weights.shape == (P,) and torch.isfinite(out.weights).all()


def test_ledger_counts_categories():
    led = wire.Ledger()
    led.record(1, "up", 0, 100, "weights")
    led.record(1, "up", 1, 50, "weights")
    led.record(1, "down", 0, 10, "seeds")
    t = led.round_totals(1)
    assert t["bytes_up"] == 150 and t["bytes_down"] == 10
    assert t["bytes_by_category"] == {"down_seeds": 10, "up_weights": 150}


# --- value by value: what the mutation run (benchmarks/results/mutation.md) showed untested ----


from dataclasses import dataclass  # noqa: E402


@dataclass(frozen=True)
class Scalars(wire.Payload):
    KIND = "test.scalars"
    CATEGORY = "control"
    f: float
    i: int
    b: bool


@dataclass(frozen=True)
class Empty(wire.Payload):
    KIND = "test.empty"
    CATEGORY = "control"


SCALAR_SPECS = {Scalars.KIND: wire.Spec(Scalars, {}, {"f": wire.ScalarSpec("float", 0, 10), "i": wire.ScalarSpec("int", 0, 10), "b": wire.ScalarSpec("bool")})}


def _raw(meta: bytes, kind: bytes = Scalars.KIND.encode(), rnd: int = 0, run: int = 0) -> bytes:
    return wire._FIXED.pack(wire.MAGIC, wire.VERSION, rnd, run, len(kind)) + kind + wire._META_LEN.pack(len(meta)) + meta


def test_scalar_fields_are_checked_by_type_and_converted():
    ok = wire.decode(_raw(b'{"f":3,"i":4,"b":true}'), SCALAR_SPECS)
    assert ok.f == 3.0 and isinstance(ok.f, float) and ok.i == 4 and ok.b is True
    bad = {
        b'{"f":"x","i":4,"b":true}': "f not a finite number",
        b'{"f":true,"i":4,"b":true}': "f not a finite number",
        b'{"f":NaN,"i":4,"b":true}': "f not a finite number",
        b'{"f":1e999,"i":4,"b":true}': "f not a finite number",
        b'{"f":3,"i":4.5,"b":true}': "i not an int",
        b'{"f":3,"i":true,"b":true}': "i not an int",
        b'{"f":3,"i":4,"b":1}': "b not a bool",
        b'{"f":30,"i":4,"b":true}': "f=30",
    }
    for meta, message in bad.items():
        with pytest.raises(wire.PayloadError) as e:
            wire.decode(_raw(meta), SCALAR_SPECS)
        assert e.value.reason in ("bad-field", "out-of-range") and message in str(e.value), (meta, str(e.value))


def test_encoding_is_exact_compact_and_refuses_nan():
    assert wire.peek(wire.encode(Empty())) == (Empty.KIND, 0, 0)  # defaults: round 0, run 0
    empty = wire.encode(Empty())
    assert empty == _raw(b"", kind=Empty.KIND.encode())  # no meta block, no tensor blob: the bare envelope
    s = wire.encode(Scalars(2.5, 3, False), 1, 2)
    assert s == _raw(b'{"f":2.5,"i":3,"b":false}', rnd=1, run=2)  # compact JSON, fields in order
    with pytest.raises(ValueError):
        wire.encode(Scalars(float("nan"), 3, False))


def test_ledger_keeps_rounds_clients_and_repeats_apart():
    led = wire.Ledger()
    led.record(1, "up", 4, 100, "weights")
    led.record(1, "up", 4, 20, "weights")  # a second reply of the same client adds up
    led.record(2, "up", 7, 5, "weights")
    t1, t2 = led.round_totals(1), led.round_totals(2)
    assert t1["bytes_up_per_client"] == {"4": 120} and t1["bytes_up"] == 120
    assert t2["bytes_up_per_client"] == {"7": 5} and t2["bytes_down_per_client"] == {}
    led.record(2, "down", 7, 9, "seeds")
    assert led.round_totals(2)["bytes_down_per_client"] == {"7": 9}
    with pytest.raises(ValueError, match="sideways"):
        led.record(1, "sideways", 0, 1, "x")


@dataclass(frozen=True)
class Vec(wire.Payload):
    KIND = "test.vec"
    w: torch.Tensor


def _vec_spec(**ts):
    return {Vec.KIND: wire.Spec(Vec, {"w": wire.TensorSpec("float32", (4,), **ts)})}


def _reason(data, specs, **kw):
    with pytest.raises(wire.PayloadError) as e:
        wire.decode(data, specs, **kw)
    return e.value.reason, e.value.detail


def test_every_rejection_names_its_reason_and_detail():
    """The ledger counts rejections by reason: each path gives its own tag and a detail a person can act on."""
    good = wire.encode(Vec(torch.ones(4)), 3, 9)
    specs = _vec_spec()
    env = wire._FIXED.size
    klen = len(Vec.KIND)
    meta_at = env + klen
    cases = [
        (("not-bytes", "str"), lambda: _reason("text", specs)),
        (("truncated", "2 bytes"), lambda: _reason(b"FF", specs)),
        (("bad-magic", ""), lambda: _reason(b"XX" + good[2:], specs)),
        (("bad-version", "2"), lambda: _reason(good[:2] + b"\x02" + good[3:], specs)),
        (("truncated", "kind"), lambda: _reason(good[: env + 2], specs)),
        (("bad-kind", "not ascii"), lambda: _reason(good[:env] + b"\xff" * klen + good[meta_at:], specs)),
        (("unexpected-kind", Vec.KIND), lambda: _reason(good, SCALAR_SPECS)),
        (("wrong-round", "3 != 4"), lambda: _reason(good, specs, round=4)),
        (("wrong-run", "9 != 8"), lambda: _reason(good, specs, run=8)),
        (("oversized", f"{len(good)} > {len(good) - 1} bytes"), lambda: _reason(good, {Vec.KIND: wire.Spec(Vec, specs[Vec.KIND].tensors, max_bytes=len(good) - 1)})),
        (("truncated", "meta"), lambda: _reason(good[:meta_at] + wire._META_LEN.pack(wire.MAX_META + 1) + good[meta_at + 2 :], specs)),
        (("truncated", "meta"), lambda: _reason(_raw(b'{"f":1', kind=Vec.KIND.encode())[:-1], specs)),
        (("bad-meta", "not JSON"), lambda: _reason(_raw(b"{nope", kind=Vec.KIND.encode()), specs)),
        (("bad-meta", "not an object"), lambda: _reason(_raw(b"[1]", kind=Vec.KIND.encode()), specs)),
        (("bad-fields", "meta fields ['x'] != []"), lambda: _reason(_raw(b'{"x":1}', kind=Vec.KIND.encode()), specs)),
        (("truncated", "no tensors"), lambda: _reason(_raw(b"", kind=Vec.KIND.encode()), specs)),
        (("trailing-bytes", "3"), lambda: _reason(wire.encode(Empty()) + b"abc", {Empty.KIND: wire.Spec(Empty, {})})),
        (("wrong-dtype", "w: torch.float64 != float32"), lambda: _reason(wire.encode(Vec(torch.ones(4, dtype=torch.float64))), specs)),
        (("wrong-shape", "w: (5,) != (4,)"), lambda: _reason(wire.encode(Vec(torch.ones(5))), specs)),
        (("oversized", "w: 4 elements"), lambda: _reason(good, _vec_spec(max_elems=3))),
        (("non-finite", "w"), lambda: _reason(wire.encode(Vec(torch.tensor([1.0, float("nan"), 0, 0]))), specs)),
        (("out-of-range", "w: |x| > 2"), lambda: _reason(wire.encode(Vec(torch.tensor([1.0, -2.5, 0, 0]))), _vec_spec(max_abs=2.0))),
        (("out-of-range", "w < 0.0"), lambda: _reason(wire.encode(Vec(torch.tensor([1.0, -0.5, 0, 0]))), _vec_spec(min_value=0.0))),
        (("out-of-range", "w > 1.0"), lambda: _reason(wire.encode(Vec(torch.tensor([1.5, 0, 0, 0]))), _vec_spec(max_value=1.0))),
    ]
    cases += [
        (("bad-fields", "tensors ['v'] != ['w']"), lambda: _reason(wire.encode(Other(torch.ones(4))).replace(Other.KIND.encode(), Vec.KIND.encode()), specs)),
    ]
    for (reason, detail), run in cases:
        got = run()
        assert got == (reason, detail), (reason, detail, got)
    reason, detail = _reason(_raw(b"", kind=Vec.KIND.encode()) + b"garbage!", specs)
    assert reason == "bad-tensors" and detail and detail != "NoneType"  # the decoder's own error type, for the log
    # a spec that promises a field its class lacks: refused as bad-fields, naming it (never a crash)
    broken = {Vec.KIND: wire.Spec(Vec, specs[Vec.KIND].tensors, {"extra": wire.ScalarSpec("int")})}
    data = _raw(b'{"extra":1}', kind=Vec.KIND.encode()) + good[len(_raw(b"", kind=Vec.KIND.encode(), rnd=3, run=9)) :]
    reason, detail = _reason(data, broken)
    assert reason == "bad-fields" and "extra" in detail


@dataclass(frozen=True)
class Other(wire.Payload):
    KIND = "test.vex"  # as long as Vec's kind, so the test can swap the tag
    v: torch.Tensor


@dataclass(frozen=True)
class Text(wire.Payload):
    KIND = "test.text"
    CATEGORY = "control"
    s: str
    xs: list


def test_strings_and_lists_are_bounded_and_checked_element_by_element():
    specs = {Text.KIND: wire.Spec(Text, {}, {"s": wire.ScalarSpec("str", max_len=3), "xs": wire.ScalarSpec("list[int]", 0, 9, max_len=2)})}
    ok = wire.decode(wire.encode(Text("abc", [1, 9])), specs)
    assert ok.s == "abc" and ok.xs == [1, 9]  # exactly at both limits
    for text, xs, expect in (("abcd", [1], ("bad-field", "s not a short string")), (5, [1], ("bad-field", "s not a short string")),
                             ("a", [1, 2, 3], ("bad-field", "xs not a list of <= 2")), ("a", [1, "x"], ("bad-field", "xs not an int")),
                             ("a", [1, 10], ("out-of-range", "xs=10"))):
        assert _reason(wire.encode(Text(text, xs)), specs) == expect


def test_the_meta_block_may_be_exactly_max_meta_bytes():
    n = wire.MAX_META - len('{"s":""}')
    specs = {Text.KIND: wire.Spec(Text, {}, {"s": wire.ScalarSpec("str", max_len=n), "xs": wire.ScalarSpec("list[int]")})}
    data = _raw(('{"s":"' + "x" * (n - len(',"xs":[]')) + '","xs":[]}').encode(), kind=Text.KIND.encode())
    assert len(data) - wire._FIXED.size - len(Text.KIND) - wire._META_LEN.size == wire.MAX_META
    assert wire.decode(data, specs).xs == []


def test_limits_are_inclusive():
    """A payload exactly at every limit is accepted: sizes, element counts and value bounds are maxima, not open bounds."""
    good = wire.encode(Vec(torch.tensor([1.0, -2.0, 0.0, 0.5])))
    exact = {Vec.KIND: wire.Spec(Vec, {"w": wire.TensorSpec("float32", (4,), max_elems=4, max_abs=2.0, min_value=-2.0, max_value=1.0)}, max_bytes=len(good))}
    assert torch.equal(wire.decode(good, exact).w, torch.tensor([1.0, -2.0, 0.0, 0.5]))
    assert wire.peek(wire._FIXED.pack(wire.MAGIC, wire.VERSION, 0, 0, 0) + wire._META_LEN.pack(0)) == ("", 0, 0)  # the shortest envelope


def test_the_fast_tensor_writer_makes_safetensors_torch_bytes_for_every_wire_dtype():
    """encode writes tensors with safetensors' numpy writer (cheaper per call): the bytes, and so the
    ledger, must be exactly what safetensors.torch.save makes, for every dtype the wire carries."""
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 4, generator=g), "f16": torch.randn(5, generator=g).half(), "bf16": torch.randn(2, generator=g).bfloat16(),
        "i64": torch.randint(-9, 9, (7,), generator=g), "i32": torch.arange(4, dtype=torch.int32), "u8": torch.arange(6, dtype=torch.uint8),
        "b": torch.tensor([True, False]), "empty": torch.zeros(0), "scalar": torch.tensor(1.5),
    }
    for name, t in tensors.items():
        one = {name: t}
        assert wire._blob(one) == st_save(one), name
    no_bf16 = {k: v for k, v in tensors.items() if k != "bf16"}
    assert wire._blob(no_bf16) == st_save(no_bf16)
    assert wire._blob(tensors) == st_save(tensors)  # with bfloat16: the torch writer
    back = st_load(wire._blob(no_bf16))
    assert all(torch.equal(back[k], v) for k, v in no_bf16.items())


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_one_magnitude_reduction_finds_every_nan_and_infinity(dtype):
    """decode checks finiteness and the bound on |x| with one reduction (the largest |x|): a NaN or
    infinity anywhere, in any dtype and at any position of a long vector, must still be rejected
    as non-finite; with ``finite=False`` an infinity is out of range and a NaN passes, as before."""
    n = 1037
    dt = wire._DTYPES[dtype]

    def spec(**ts):
        return {Vec.KIND: wire.Spec(Vec, {"w": wire.TensorSpec(dtype, (n,), **ts)})}

    assert wire.decode(wire.encode(Vec(torch.randn(n).to(dt))), spec(max_abs=100.0)).w.dtype == dt
    for pos in (0, 1, 7, 8, 15, 16, 500, n - 2, n - 1):
        for v in (float("nan"), float("inf"), float("-inf")):
            w = torch.randn(n).to(dt)
            w[pos] = v
            data = wire.encode(Vec(w))
            assert _reason(data, spec())[0] == "non-finite"
            assert _reason(data, spec(max_abs=100.0))[0] == "non-finite"
            if v != v:
                assert wire.decode(data, spec(finite=False, max_abs=100.0)).w.isnan().any()
            else:
                assert _reason(data, spec(finite=False, max_abs=100.0)) == ("out-of-range", "w: |x| > 100")


def test_a_reused_header_gives_the_writers_bytes():
    """After the first payload of a layout, encode writes the cached header and the data: every
    later blob must still be what safetensors' writer makes of the same tensors."""
    from safetensors.torch import save as st_save

    g = torch.Generator().manual_seed(0)
    layouts = [
        {"w": lambda: torch.randn(1037, generator=g)},
        {"z": lambda: torch.randn(3, 5, generator=g).half(), "a": lambda: torch.randint(-9, 9, (4,), generator=g), "m": lambda: torch.rand(6, generator=g) > 0.5, "e": lambda: torch.zeros(0)},
        {"s": lambda: torch.randn((), generator=g), "b": lambda: torch.randn(7, generator=g).bfloat16()},  # bfloat16: the torch writer
    ]
    for layout in layouts:
        for _ in range(4):
            tensors = {k: make() for k, make in layout.items()}
            assert wire._blob(tensors) == st_save(tensors)
