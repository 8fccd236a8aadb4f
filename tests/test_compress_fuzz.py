"""Hostile compressed uploads: the decoder fuzzing (tests/support/fuzzing.py) applied to every codec.

Each codec's real reply is damaged by every mutation class of the shared fuzzer, and by byte-level
damage inside the encoding itself; the server must reject each with a reason (a counted
rejection) or accept a reply that rebuilds into a finite method reply of the right shape.
"""

import dataclasses
import random
from functools import lru_cache

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featherfl import wire
from featherfl.compress.wrapper import KIND
from featherfl.schema import build_config
from featherfl.experiment import prepare
from support import fuzzing

CODECS = {
    "topk": [("compress.ratio", 0.05)],
    "randk": [("compress.ratio", 0.05)],
    "qsgd": [("compress.bits", 3)],
    "sign": [],
    "powersgd": [("compress.rank", 2)],
}


@lru_cache(maxsize=None)
def entry(method: str) -> fuzzing.Entry:
    cfg = build_config(overrides=[("clients", 4), ("rounds", 2), ("compress.method", method), *CODECS[method]])
    p = prepare(cfg)
    alg = p.algorithm
    p.ctx.run_id = fuzzing.RUN
    downs = alg.configure(fuzzing.ROUND, [0])
    client = alg.make_client()
    reply = client.update(fuzzing.ROUND, downs[0], p.client_data[0], {})
    return fuzzing.Entry(f"fedavg+{method}", "up", KIND, dict(alg.uplink_specs(fuzzing.ROUND, 0)), reply)


def check(e: fuzzing.Entry, data: bytes, reasons, specs=None) -> str:
    try:
        out = wire.decode(data, specs or e.specs, round=fuzzing.ROUND, run=fuzzing.RUN)
    except wire.PayloadError as err:
        assert err.reason
        assert reasons is None or err.reason in reasons, (e.name, err.reason, reasons)
        return err.reason
    assert reasons is None, (e.name, "accepted an input that should fail with", reasons)
    rebuilt = out.rebuilt
    assert rebuilt.weights.dtype == torch.float32 and rebuilt.weights.dim() == 1
    assert torch.isfinite(rebuilt.weights).all()
    return "accepted"


def damaged(e: fuzzing.Entry, rng: random.Random) -> bytes:
    """The reply with its encoding (not the envelope) damaged: bit flips, cuts, extra bytes."""
    b = bytearray(e.example.data.numpy().tobytes())
    how = rng.randrange(4)
    if how == 0:
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif how == 1:
        b = b[: rng.randrange(1, len(b))]
    elif how == 2:
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        i = rng.randrange(len(b))
        b[i : i + 4] = bytes(rng.randrange(256) for _ in range(4))
    bad = type(e.example)(data=torch.frombuffer(bytearray(b), dtype=torch.uint8), num_samples=e.example.num_samples)
    return wire.encode(bad, fuzzing.ROUND, fuzzing.RUN)


@pytest.mark.parametrize("method", sorted(CODECS))
def test_the_real_reply_decodes_and_every_mutation_class_is_rejected(method):
    e = entry(method)
    assert check(e, wire.encode(e.example, fuzzing.ROUND, fuzzing.RUN), None) == "accepted"
    seen = set()
    for mutation in fuzzing.MUTATIONS:
        for seed in range(20):
            data, reasons = fuzzing.MUTATIONS[mutation](e, random.Random(seed))
            specs = {k: dataclasses.replace(s, max_bytes=len(data) - 1) for k, s in e.specs.items()} if mutation == "oversized" else None
            seen.add(check(e, data, reasons, specs))
    assert {"truncated", "bad-magic", "wrong-round", "unexpected-kind", "bad-fields", "wrong-dtype", "wrong-shape", "oversized"} <= seen


@pytest.mark.parametrize("method", sorted(CODECS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_damaged_encodings_never_crash_the_server(method, seed):
    e = entry(method)
    check(e, damaged(e, random.Random(seed)), None)
