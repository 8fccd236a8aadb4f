import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from featherfl import wire
from featherfl.algorithms.fedavg import WeightsUp, weights_spec
from featherfl.models import build_model, flat_state

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
    header = wire.header_bytes(payload)
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
