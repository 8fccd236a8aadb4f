"""Run a round's clients as one batched computation (``engine.vectorize``), in process.

The device side of each client stays what :func:`featherfl.engines.base.run_client`
does: decode (validating) its downlink, update, encode its reply. Only the middle
step is shared: a client half that offers ``update_many`` trains every client of
the round at once (``featherfl.algorithms.vectorized``). Each client still gets its
own bytes, its own reply and its own state.

A round's cohort is cut into fixed groups (:func:`client_groups`, ``engine.group_clients``)
that depend only on the cohort, never on how many workers or actors run them: a client's
result can depend on the group it is trained in (padding, kernel blocking), so fixing the
groups is what makes the rows identical for one worker or many (:func:`run_group` is the unit
of work both the local engine's threads and the Ray engine's actors run).

When anything in a group's batched call fails, that group's clients run one by one
instead, so a failure is attributed to the client that caused it exactly as on
the sequential path.
"""

from __future__ import annotations

import queue
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import torch

import featherfl.wire as wire
from featherfl.algorithms.base import ClientData, ClientHalf
from featherfl.engines.base import ClientFailure, ClientOutcome, run_client


def can_batch(cfg, client: ClientHalf, n_jobs: int) -> bool:
    """Whether this round's clients may run batched: enabled, more than one, and the client half supports it."""
    if cfg["engine.vectorize"] == "off" or n_jobs < 2:
        return False
    check = getattr(client, "can_update_many", None)  # a wrapper that alters replies one by one (attackers) says no
    return bool(check and check())


def client_groups(cids: list[int], most: int) -> list[list[int]]:
    """``cids`` in order, cut into the fewest groups of at most ``most`` clients, of near-equal
    sizes (the first ``len % groups`` one larger): 500 clients at most 256 make 250 + 250."""
    if not cids:
        return []
    n = -(-len(cids) // most)
    base, extra = divmod(len(cids), n)
    out, i = [], 0
    for g in range(n):
        k = base + (g < extra)
        out.append(cids[i : i + k])
        i += k
    return out


def run_group(client: ClientHalf, rnd: int, jobs: dict[int, bytes], data: dict[int, ClientData], states: dict[int, dict], run_id: int) -> dict[int, ClientOutcome]:
    """One group of a round, batched; if the batched call raises, its clients one by one, so each
    failure is its own client's. Each client is charged an equal share of the group's time."""
    t = time.perf_counter()
    try:
        replies = run_clients_batched(client, rnd, jobs, data, states, run_id)
    except Exception:  # run them one by one: a failure is then attributed to its own client
        replies = None
    if replies is not None:
        share = (time.perf_counter() - t) / len(jobs)
        return {cid: ClientOutcome(reply=replies[cid], seconds=share) for cid in jobs}
    out: dict[int, ClientOutcome] = {}
    for cid, down in jobs.items():
        t = time.perf_counter()
        try:
            out[cid] = ClientOutcome(reply=run_client(client, rnd, down, data[cid], states[cid], run_id), seconds=time.perf_counter() - t)
        except Exception as e:  # a failing client must not end the run
            out[cid] = ClientOutcome.raised(ClientFailure.of(e, traceback.format_exc()), time.perf_counter() - t)
    return out


def run_clients_batched(client: ClientHalf, rnd: int, jobs: dict[int, bytes], data: dict[int, ClientData], states: dict[int, dict], run_id: int) -> dict[int, bytes]:
    """Decode every downlink, call ``client.update_many`` once, encode every reply."""
    specs = client.downlink_specs(rnd)
    decoded: dict[bytes, wire.Payload] = {}  # identical downlink bytes (one global model) are decoded and checked once
    downs = {}
    for cid, b in jobs.items():
        if b not in decoded:
            decoded[b] = wire.decode(b, specs, round=rnd, run=run_id)
        downs[cid] = decoded[b]
    ups = client.update_many(rnd, downs, {cid: data[cid] for cid in jobs}, {cid: states[cid] for cid in jobs})
    if set(ups) != set(jobs):
        raise RuntimeError(f"update_many answered for clients {sorted(ups)}, asked for {sorted(jobs)}")
    return {cid: wire.encode(ups[cid], rnd, run_id) for cid in jobs}


class GroupThreads:
    """Threads that run client groups side by side (``engine.workers``), one per client half given:
    each task takes a half of its own, since a half's model is scratch space its update
    overwrites. torch kernels release the GIL, so the groups' arithmetic overlaps.

    Each thread runs torch with ``torch_threads`` intra-op threads (OpenMP's and MKL's counts are
    per thread: a new thread would otherwise use every core) and the caller's grad mode."""

    def __init__(self, halves: list[ClientHalf], torch_threads: int):
        self._halves: queue.SimpleQueue = queue.SimpleQueue()
        for h in halves:
            self._halves.put(h)
        self._pool = ThreadPoolExecutor(len(halves), thread_name_prefix="featherfl-group", initializer=torch.set_num_threads, initargs=(torch_threads,))

    def map(self, fn: Callable[[ClientHalf, object], object], items: Iterable) -> Iterator:
        """``fn(half, item)`` for every item, side by side; results in the items' order."""
        grad = torch.is_grad_enabled()

        def task(item):
            half = self._halves.get()
            try:
                with torch.set_grad_enabled(grad):
                    return fn(half, item)
            finally:
                self._halves.put(half)

        futures = [self._pool.submit(task, item) for item in items]
        try:
            for f in futures:
                yield f.result()
        finally:
            for f in futures:  # an error, or the caller stopping early: no group is left running
                f.cancel()
            for f in futures:
                if not f.cancelled():
                    f.exception()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
