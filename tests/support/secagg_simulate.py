"""One SecAgg+ round over given vectors, in this process, every message through the wire codec.

For tests and the secagg benchmarks (test-only code: it lives with the tests): the same client and server code the engines run,
without a model in the loop, so rounds of 1,000 clients can be measured. Bytes are the
encoded messages' lengths; seconds are split into the clients' total and the server's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

import featherfl.wire as wire
import featherfl.secagg.crypto as crypto
import featherfl.secagg.protocol as protocol


@dataclass
class Outcome:
    total: np.ndarray | None  # decoded sum (float64), None when the round was skipped
    skipped: str | None
    server: protocol.ServerRound
    bytes_up: dict[int, int] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    client_seconds: float = 0.0
    server_seconds: float = 0.0
    server_stages: dict[str, float] = field(default_factory=dict)  # server CPU seconds by step
    server_cpu_seconds: float = 0.0  # the server's CPU time (this process's): what a shared machine's load does not inflate
    client_stages: dict[str, float] = field(default_factory=dict)  # all clients' seconds by message answered


def run_round(
    vectors: dict[int, np.ndarray],
    *,
    neighbours: int = 0,
    threshold: float = 0.5,
    fraction_bits: int = 32,
    ring_bits: int = 64,
    drop_before_masking: set[int] = frozenset(),
    drop_after_masking: set[int] = frozenset(),
    tamper_reveal: dict[int, Callable[[protocol.RevealUp], protocol.RevealUp]] | None = None,
    rnd: int = 1,
    run: int = 7,
    seed: int = 0,
) -> Outcome:
    from featherfl.seeding import derive_seed

    cids = sorted(vectors)
    k = protocol.neighbour_count(len(cids), neighbours)
    t = protocol.threshold_for(k, threshold)
    graph = protocol.neighbour_graph(cids, k, derive_seed(seed, "secagg-graph", rnd))
    server = protocol.ServerRound(rnd, run, graph, t)
    states: dict[int, dict] = {c: {} for c in cids}
    out = Outcome(None, None, server, {c: 0 for c in cids}, {c: 0 for c in cids})
    specs = protocol.client_specs({})

    def exchange(downs: dict[int, wire.Payload], up_specs: Callable[[int], dict], answer: Callable) -> dict[int, wire.Payload]:
        replies = {}
        for c, msg in sorted(downs.items()):
            data = wire.encode(msg, rnd, run)
            out.bytes_down[c] += len(data)
            t0 = time.perf_counter()
            got = wire.decode(data, specs, round=rnd, run=run)
            reply = answer(c, got)
            up = wire.encode(reply, rnd, run)
            spent = time.perf_counter() - t0
            out.client_seconds += spent
            out.client_stages[msg.KIND] = out.client_stages.get(msg.KIND, 0.0) + spent
            out.bytes_up[c] += len(up)
            t0, c0 = time.perf_counter(), time.process_time()
            replies[c] = wire.decode(up, up_specs(c), round=rnd, run=run)
            spent = time.perf_counter() - t0
            out.server_cpu_seconds += time.process_time() - c0
            out.server_seconds += spent
            out.server_stages["decode"] = out.server_stages.get("decode", 0.0) + time.process_time() - c0
        return replies

    def timed(fn, *a):
        t0, c0 = time.perf_counter(), time.process_time()
        r = fn(*a)
        spent = time.perf_counter() - t0
        out.server_cpu_seconds += time.process_time() - c0
        out.server_seconds += spent
        out.server_stages[fn.__name__] = out.server_stages.get(fn.__name__, 0.0) + time.process_time() - c0
        return r

    session = lambda c: protocol.ClientSession(states[c], run)  # noqa: E731
    keys = exchange(timed(server.advertise), lambda c: protocol.keys_up_spec(), lambda c, m: session(c).advertise(rnd, c, m))
    timed(server.take_keys, keys)
    downs = timed(server.send_keys)
    shares = exchange(downs, lambda c: protocol.shares_up_spec(len(server.keys_sent[c])), lambda c, m: session(c).keys(rnd, m))
    timed(server.take_shares, shares)
    dim = len(next(iter(vectors.values()))) + 0
    envelopes = {c: protocol.Envelope(torch.zeros(0, dtype=torch.uint8), "weights", server.masking_set(c), len(server.u2)) for c in server.u2 if c not in drop_before_masking}
    signed = crypto.RINGS[ring_bits][1]

    def mask(c, m):
        y, _ = session(c).mask(rnd, m, vectors[c], fraction_bits, ring_bits)
        return protocol.MaskedUp(torch.from_numpy(y.view(signed).copy()), [])

    masked = exchange(envelopes, lambda c: protocol.masked_up_spec(dim, 0, ring_bits), mask)
    unmask = timed(server.send_unmask, sorted(masked))
    unmask = {c: m for c, m in unmask.items() if c not in drop_after_masking}
    tamper = tamper_reveal or {}

    def reveal(c, m):
        r = session(c).unmask(rnd, m)
        return tamper[c](r) if c in tamper else r

    reveals = exchange(unmask, lambda c: protocol.reveal_up_spec(len(server.unmask_sent[c][2])), reveal)
    timed(server.take_reveals, reveals)
    unsigned = crypto.RINGS[ring_bits][0]
    try:
        words = timed(server.unmask_sum, {c: masked[c].y.numpy().view(unsigned) for c in masked})
    except protocol.Skip as e:
        out.skipped = str(e)
        return out
    out.total = crypto.decode_fixed(words, fraction_bits)
    return out


def error_bound(participants: int, fraction_bits: int) -> float:
    """Largest difference between the decoded sum and the true sum of in-range values:
    each client's rounding is at most half a step, 2^-(f+1)."""
    return participants * 2.0 ** -(fraction_bits + 1)
