"""The compressors do what their papers say, and their encodings are the sizes the formulas give."""

import math

import numpy as np
import pytest
import torch

from featherfl.compress import encoding as enc
from featherfl.compress.codecs import Codec, Settings, keep_count, qsgd_levels
from featherfl.wire import PayloadError

LAYOUT = [("w1", (64, 32)), ("b1", (64,)), ("w2", (10, 64)), ("b2", (10,))]


def tensors(seed=0, layout=LAYOUT):
    g = np.random.default_rng(seed)
    return [g.standard_normal(shape).astype(np.float32) for _, shape in layout]


def roundtrip(settings, xs, layout=LAYOUT, rnd=3, cid=1, state=None):
    codec = Codec(settings)
    blob, sent = codec.encode(layout, xs, rnd, cid, {} if state is None else state)
    back = codec.decode(blob, layout, rnd, cid)
    for a, b in zip(sent, back):
        np.testing.assert_array_equal(a, b)
    return blob, back


def test_varints_and_codes_roundtrip():
    v = np.array([0, 1, 127, 128, 300, 2**21, 2**32 - 1])
    r = enc.Reader(enc.varint_bytes(v))
    np.testing.assert_array_equal(enc.read_varints(r, len(v), "x"), v)
    r.done()
    assert enc.varint_size(v) == len(enc.varint_bytes(v)) == 1 + 1 + 1 + 2 + 2 + 4 + 5
    codes = np.arange(15) % 7
    r = enc.Reader(enc.pack_codes(codes, 3))
    np.testing.assert_array_equal(enc.read_codes(r, 15, 3, "x"), codes)


@pytest.mark.parametrize("values", ["float32", "float16"])
def test_topk_keeps_the_largest_entries_and_its_bytes_match_the_formula(values):
    xs = tensors()
    blob, back = roundtrip(Settings("topk", ratio=0.05, values=values), xs)
    width = 4 if values == "float32" else 2
    expected = 1  # codec id
    for (_, shape), x, y in zip(LAYOUT, xs, back):
        n = x.size
        k = keep_count(n, 0.05)
        kept = np.flatnonzero(y.reshape(-1))
        assert kept.size == k
        threshold = np.sort(np.abs(x.reshape(-1)))[-k]
        assert (np.abs(x.reshape(-1))[kept] >= threshold).all()
        idx = np.sort(kept)
        gaps = np.diff(idx, prepend=-1) - 1
        expected += 1 + min((n + 7) // 8, enc.varint_size(gaps)) + width * k
    assert len(blob) == expected


def test_topk_picks_the_smaller_index_encoding():
    n = 4096
    x = np.zeros(n, dtype=np.float32)
    x[::2] = 1.0  # dense half: the bitmap (512 B) beats 2048 one-byte varints
    blob, _ = roundtrip(Settings("topk", ratio=0.5), [x], [("v", (n,))])
    assert blob[1] == 0 and len(blob) == 1 + 1 + n // 8 + 4 * (n // 2)
    blob, _ = roundtrip(Settings("topk", ratio=0.001), [np.arange(n, dtype=np.float32)], [("v", (n,))])
    assert blob[1] == 1 and len(blob) < 1 + 1 + n // 8  # 5 varints


def test_topk_error_feedback_delivers_every_update_eventually():
    """DGC's local accumulation (Lin et al. 2018, Sec. 3.1): sum of what was sent + the residual
    == sum of the true updates, exactly, round after round."""
    codec = Codec(Settings("topk", ratio=0.01, error_feedback=True))
    layout = [("v", (1000,))]
    g = np.random.default_rng(0)
    residual = np.zeros(1000, dtype=np.float32)
    sent_total = np.zeros(1000, dtype=np.float64)
    true_total = np.zeros(1000, dtype=np.float64)
    for rnd in range(50):
        u = g.standard_normal(1000).astype(np.float32)
        true_total += u
        p = u + residual
        _, (sent,) = codec.encode(layout, [p], rnd, 0, {})
        residual = p - sent
        sent_total += sent
    np.testing.assert_allclose(sent_total + residual, true_total, atol=1e-3)
    assert np.abs(residual).max() < np.abs(true_total).max()  # the residual stays bounded


def test_qsgd_is_unbiased_and_sized_as_norms_plus_packed_levels():
    x = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    s = Settings("qsgd", bits=2, bucket=256)
    codec = Codec(s)
    mean = np.zeros(1000)
    trials = 2000
    for rnd in range(trials):
        blob, (y,) = codec.encode([("v", (1000,))], [x], rnd, 0, {})
        mean += y / trials
        assert set(np.unique(np.round(np.abs(y) / np.repeat(np.sqrt([np.sum(x[i:i + 256] ** 2) for i in range(0, 1000, 256)]), 256)[:1000], 5))) <= {0.0, 1.0}
    # each entry's decode is norm * (0 or +-1): variance <= norm |x|; the mean of 2000 is within 5 sigma
    norms = np.repeat([np.linalg.norm(x[i:i + 256]) for i in range(0, 1000, 256)], 256)[:1000]
    sigma = np.sqrt(norms * np.abs(x) / trials)
    assert (np.abs(mean - x) < 5 * sigma + 1e-6).all()
    assert len(blob) == 1 + 4 * math.ceil(1000 / 256) + math.ceil(1000 * 2 / 8)


def test_qsgd_more_bits_less_error():
    x = np.random.default_rng(2).standard_normal(5000).astype(np.float32)
    errs = [np.linalg.norm(roundtrip(Settings("qsgd", bits=b), [x], [("v", (5000,))])[1][0] - x) for b in (2, 4, 8)]
    assert errs[0] > errs[1] > errs[2]
    assert qsgd_levels(4) == 7


def test_sign_scale_is_the_mean_magnitude():
    xs = tensors(3)
    blob, back = roundtrip(Settings("sign"), xs)
    for x, y in zip(xs, back):
        np.testing.assert_allclose(np.abs(y), np.abs(x).mean(), rtol=1e-6)
        assert (np.sign(y) == np.where(x >= 0, 1, -1)).all()
    assert len(blob) == 1 + sum(4 + math.ceil(x.size / 8) for x in xs)


def test_powersgd_is_exact_on_a_rank_r_matrix_and_warm_starts():
    g = np.random.default_rng(4)
    m = (g.standard_normal((64, 3)) @ g.standard_normal((3, 32))).astype(np.float32)
    state = {}
    codec = Codec(Settings("powersgd", rank=3))
    for rnd in range(3):
        blob, (y,) = codec.encode([("w", (64, 32))], [m], rnd, 0, state)
        np.testing.assert_allclose(y, m, atol=1e-4)
    assert len(blob) == 1 + 4 * 3 * (64 + 32) and tuple(state["w"].shape) == (32, 3)
    # rank 1 of a full-rank matrix: the warm start is a power iteration across rounds, so the
    # error falls towards the best rank-1 error (Vogels et al. 2019, Sec. 3)
    full = g.standard_normal((64, 32)).astype(np.float32)
    codec1, st1 = Codec(Settings("powersgd", rank=1)), {}
    errs = [np.linalg.norm(codec1.encode([("w", (64, 32))], [full], r, 0, st1)[1][0] - full) for r in range(30)]
    sv = np.linalg.svd(full, compute_uv=False)
    best = np.sqrt((sv[1:] ** 2).sum())
    assert errs[-1] < errs[0] and errs[-1] < best * 1.01


def test_powersgd_sends_vectors_dense():
    xs = tensors(5)
    blob, back = roundtrip(Settings("powersgd", rank=2), xs, state={})
    np.testing.assert_array_equal(back[1], xs[1])
    assert len(blob) == 1 + 4 * (2 * (64 + 32) + 64 + 2 * (10 + 64) + 10)


def test_randk_unbiased_without_feedback_and_seeded_indices():
    x = np.random.default_rng(6).standard_normal(200).astype(np.float32)
    codec = Codec(Settings("randk", ratio=0.1, seed=7))
    _, (a,) = codec.encode([("v", (200,))], [x], 1, 2, {})
    _, (b,) = codec.encode([("v", (200,))], [x], 1, 2, {})
    _, (c,) = codec.encode([("v", (200,))], [x], 2, 2, {})
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.flatnonzero(a), np.flatnonzero(c))
    kept = np.flatnonzero(a)
    np.testing.assert_allclose(a[kept], x[kept] * 10, rtol=1e-6)
    mean = np.mean([codec.encode([("v", (200,))], [x], r, 0, {})[1][0] for r in range(3000)], axis=0)
    assert np.abs(mean - x).max() < 5 * np.sqrt(9 * x**2 / 3000).max()
    blob, _ = codec.encode([("v", (200,))], [x], 1, 2, {})
    assert len(blob) == 1 + 4 * 20


# --- hostile encodings ----------------------------------------------------------------------
def reject(settings, blob, layout=LAYOUT):
    with pytest.raises(PayloadError) as e:
        Codec(settings).decode(blob, layout, 3, 1)
    return e.value.reason


def test_decoders_reject_bad_indices_counts_and_values():
    s = Settings("topk", ratio=0.001)
    layout = [("v", (1000,))]
    good, _ = Codec(s).encode(layout, [np.arange(1000, dtype=np.float32)], 3, 1, {})
    assert good[1] == 1  # varint mode, one index (999 = gap 999: two bytes), then 4 value bytes
    assert reject(s, good[:2] + enc.varint_bytes(np.array([1000])) + good[4:], layout) == "bad-indices"
    assert reject(s, good[:-1], layout) == "truncated"
    assert reject(s, good + b"\0", layout) == "trailing-bytes"
    assert reject(s, good[:4] + np.array([np.nan], "<f4").tobytes(), layout) == "non-finite"
    assert reject(s, bytes([9]) + good[1:], layout) == "bad-encoding"
    assert reject(s, good[:1] + bytes([7]) + good[2:], layout) == "bad-encoding"
    bitmap = np.zeros(1000, np.uint8)
    bitmap[[3, 5]] = 1  # two entries where one is expected
    assert reject(s, good[:1] + bytes([0]) + np.packbits(bitmap, bitorder="little").tobytes() + good[-4:], layout) == "bad-count"
    q = Settings("qsgd", bits=2, bucket=512)
    blob = bytes([3]) + np.array([1.0, 1.0], "<f4").tobytes() + bytes([0xFF] * 250)
    assert reject(q, blob, layout) == "out-of-range"  # code 3 > 2s = 2
    sg = Settings("sign")
    assert reject(sg, bytes([4]) + np.array([-1.0], "<f4").tobytes() + bytes(125), layout) == "out-of-range"


def test_random_bytes_never_escape_as_another_error():
    g = np.random.default_rng(0)
    for method in ("topk", "randk", "qsgd", "sign", "powersgd"):
        s = Settings(method, ratio=0.05)
        codec = Codec(s)
        good, _ = codec.encode(LAYOUT, tensors(), 3, 1, {})
        for trial in range(300):
            b = bytearray(good)
            kind = trial % 4
            if kind == 0:
                b = bytearray(g.bytes(int(g.integers(0, len(good) + 10))))
            elif kind == 1:
                for _ in range(int(g.integers(1, 8))):
                    b[int(g.integers(0, len(b)))] = int(g.integers(0, 256))
            elif kind == 2:
                b = b[: int(g.integers(0, len(b)))]
            else:
                b = b + g.bytes(int(g.integers(1, 9)))
            try:
                out = codec.decode(bytes(b), LAYOUT, 3, 1)
            except PayloadError as e:
                assert e.reason
                continue
            assert [o.shape for o in out] == [shape for _, shape in LAYOUT]
            assert all(np.isfinite(o).all() for o in out)
