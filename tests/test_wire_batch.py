"""``wire.decode_many`` gives, reply by reply, what ``wire.decode`` gives: the same payloads (values,
dtypes, shapes) and the same rejections (reason and text), hostile replies mixed in among good ones."""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

import pytest
import torch

import featherfl.wire as wire
from featherfl.wire import Payload, PayloadError, ScalarSpec, Spec, TensorSpec


@dataclass(frozen=True)
class Up(Payload):
    KIND = "t.up"
    w: torch.Tensor
    b: torch.Tensor
    n: int


@dataclass(frozen=True)
class Half(Payload):
    KIND = "t.half"
    h: torch.Tensor


SPEC = {
    Up.KIND: Spec(Up, {"w": TensorSpec("float32", (4, None), max_abs=100.0), "b": TensorSpec("int64", (3,), min_value=0, max_value=9)}, {"n": ScalarSpec("int", 1, 1000)}),
    Half.KIND: Spec(Half, {"h": TensorSpec("float16", (5,))}),
}


def same(a, b) -> bool:
    if isinstance(a, PayloadError) or isinstance(b, PayloadError):
        return type(a) is type(b) and a.reason == b.reason and str(a) == str(b)
    if type(a) is not type(b):
        return False
    for k, v in vars(a).items():
        w = getattr(b, k)
        if isinstance(v, torch.Tensor):
            if v.dtype != w.dtype or v.shape != w.shape or not torch.equal(v.view(torch.uint8) if v.dtype == torch.bool else v, w):
                return False
        elif v != w:
            return False
    return True


def decoded(data, spec=SPEC, rnd=3, run=7):
    try:
        return wire.decode(data, spec, round=rnd, run=run)
    except PayloadError as e:
        return e


def good(rng: random.Random, k: int = 0) -> bytes:
    w = torch.randn(4, 6) * 10
    if k % 7 == 3:
        w[rng.randrange(4), rng.randrange(6)] = rng.choice([float("nan"), float("inf"), -float("inf"), 1e3])
    b = torch.tensor([rng.randrange(0, 10) for _ in range(3)])
    if k % 11 == 5:
        b[1] = rng.choice([-1, 10])
    return wire.encode(Up(w, b, rng.randrange(1, 1200)), 3, 7)


def mutants(rng: random.Random, base: bytes) -> list:
    out = [base[: rng.randrange(len(base))], base + b"x", b"", b"FF", 7, "text", bytearray(base)]
    for _ in range(30):  # flipped bytes anywhere: envelope, meta, safetensors header, data
        m = bytearray(base)
        m[rng.randrange(len(m))] ^= 1 << rng.randrange(8)
        out.append(bytes(m))
    out.append(wire.encode(Up(torch.randn(4, 6), torch.tensor([1, 2, 3]), 5), 4, 7))  # wrong round
    out.append(wire.encode(Up(torch.randn(4, 6), torch.tensor([1, 2, 3]), 5), 3, 8))  # wrong run
    out.append(wire.encode(Up(torch.randn(4, 7), torch.tensor([1, 2, 3]), 5), 3, 7))  # another width (a second layout)
    out.append(wire.encode(Up(torch.randn(4, 6).double(), torch.tensor([1, 2, 3]), 5), 3, 7))  # wrong dtype
    out.append(wire.encode(Up(torch.randn(3, 6), torch.tensor([1, 2, 3]), 5), 3, 7))  # wrong shape
    out.append(wire.encode(Half(torch.randn(5).half()), 3, 7))
    h = torch.randn(5).half()
    h[2] = float("nan")
    out.append(wire.encode(Half(h), 3, 7))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_decode_many_matches_decode_reply_by_reply(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    base = good(rng)
    datas = [good(rng, k) for k in range(60)] + mutants(rng, base)
    rng.shuffle(datas)
    got = wire.decode_many(datas, [SPEC] * len(datas), round=3, run=7)
    assert len(got) == len(datas)
    for d, g in zip(datas, got):
        assert same(decoded(d), g), (decoded(d), g)
    assert sum(not isinstance(g, PayloadError) for g in got) > 30  # the batched path did run


def test_a_bad_first_reply_of_a_layout_does_not_change_the_others():
    rng = random.Random(1)
    bad = bytearray(good(rng))
    bad[-3] = 0xFF  # the last weight: a NaN or a huge value, same layout
    bad[-2] = 0xFF
    bad[-1] = 0x7F
    datas = [bytes(bad)] + [good(rng) for _ in range(10)]
    got = wire.decode_many(datas, [SPEC] * len(datas), round=3, run=7)
    for d, g in zip(datas, got):
        assert same(decoded(d), g)


def test_decoded_rows_are_their_own_values():
    rng = random.Random(2)
    datas = [good(rng) for _ in range(5)]
    got = wire.decode_many(datas, [SPEC] * 5, round=3, run=7)
    got[0].w.add_(1)  # a receiver that edits one reply in place leaves the others as they came
    for d, g in zip(datas[1:], got[1:]):
        assert same(decoded(d), g)


def test_an_unproven_header_takes_the_plain_decoder():
    """A safetensors header that safetensors refuses: every such reply is refused as decode refuses it."""
    rng = random.Random(3)
    base = good(rng)
    kind = Up.KIND.encode()
    off = wire._FIXED.size + len(kind)
    (mlen,) = struct.unpack_from("<H", base, off)
    start = off + 2 + mlen
    broken = base[: start + 8] + b"[" + base[start + 9 :]  # the header's JSON broken, length kept
    datas = [broken] * 4 + [base] * 3
    got = wire.decode_many(datas, [SPEC] * 7, round=3, run=7)
    assert [g.reason if isinstance(g, PayloadError) else "ok" for g in got] == ["bad-tensors"] * 4 + ["ok"] * 3
    for d, g in zip(datas, got):
        assert same(decoded(d), g)
