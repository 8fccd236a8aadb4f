"""Run a round's clients as one batched computation (``engine.vectorize``), in process.

The device side of each client stays what :func:`featherfl.engines.base.run_client`
does: decode (validating) its downlink, update, encode its reply. Only the middle
step is shared: a client half that offers ``update_many`` trains every client of
the round at once (``featherfl.algorithms.vectorized``). Each client still gets its
own bytes, its own reply and its own state.

A round's cohort is cut into fixed groups (:func:`plan_groups`, ``engine.group_clients``)
that depend only on the cohort and its clients' numbers of local steps, never on how many
workers or actors run them: a client's result can depend on the group it is trained in
(padding, kernel blocking), so fixing the groups is what makes the rows identical for one
worker or many (:func:`run_group` is the unit of work both the local engine's threads and the
Ray engine's actors run).

A batched call of most models runs as many steps as its longest client: a client that
finishes early is masked, not skipped, so it is still computed. With clients of very different
sizes (a power law: most hold a few batches, a few hold thousands of rows) one group would make
every client pay for the largest one's steps, so :func:`plan_groups` sorts the cohort by steps and
cuts it where the cost model says it pays (:func:`group_cost`). A client half whose batched steps
compute only the clients still training (FedAvg with a plain MLP or a small conv net) answers
``local_steps`` with None, and its cohort keeps the client-order groups.

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

import numpy as np
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


#: What one step of a batched call costs beyond its clients' own arithmetic, in client-steps
#: (``engine.group_overhead``'s default). Measured on the MLP 64-64-10 at batch 10, one thread
#: (2-core x86 machine): a step of C clients took about 1.44 ms + 0.087 ms x C, so 16; the call's
#: own set-up is about one step's overhead. For a small CNN the same fit gave about 2 (its
#: per-client arithmetic is larger); a value above the true one only makes groups larger.
GROUP_OVERHEAD = 16

#: Size-aware groups replace the client-order ones only when the cost model says they save at
#: least this share of the round: a cohort of near-equal clients keeps the groups (and so the
#: float rounding of its rows) it always had.
SIZE_AWARE_SAVING = 0.2


def group_cost(max_steps: int, clients: int, overhead: int) -> int:
    """The cost model of one batched call, in client-steps: every one of its ``max_steps`` steps
    computes all ``clients`` clients (finished ones are masked, not skipped) plus a fixed
    ``overhead`` (dispatch, the optimiser's handful of ops); the call's set-up costs one more
    step's overhead."""
    return max_steps * (overhead + clients) + overhead


def plan_groups(cids: list[int], most: int, steps: list[int] | None = None, overhead: int = GROUP_OVERHEAD) -> list[list[int]]:
    """The round's batched groups, largest cost first (the order workers should take them in).

    Without ``steps`` (a client half that cannot say), :func:`client_groups`. Otherwise the
    cohort sorted by (local steps, client id) is cut into runs of at most ``most`` clients that
    minimise the sum of :func:`group_cost` (dynamic programming over the sorted list: groups of
    an optimal cut of a sorted list are contiguous in it), and that cut is taken if it is at
    least ``SIZE_AWARE_SAVING`` cheaper than the client-order groups. Within a size-aware group
    clients stay in sorted order (a memory split inside the call then cuts near-equal clients
    together). Everything here depends on the cohort, the steps and the two settings alone, so
    the groups are the same whoever trains them."""
    even = client_groups(cids, most)
    if steps is not None and len(steps) != len(cids):
        raise ValueError(f"plan_groups: {len(steps)} step counts for {len(cids)} clients")
    if steps is None or len(cids) < 2 or min(steps) == max(steps):  # nothing to sort by
        return sorted(even, key=len, reverse=True)
    of = dict(zip(cids, steps))
    even_cost = sum(group_cost(max(of[c] for c in g), len(g), overhead) for g in even)
    order = sorted(range(len(cids)), key=lambda i: (steps[i], cids[i]))
    s = np.array([steps[i] for i in order], dtype=np.int64)
    n = len(s)
    best = np.zeros(n + 1, dtype=np.int64)  # best[j]: cheapest cut of the first j sorted clients
    cut = np.zeros(n + 1, dtype=np.int64)  # where that cut's last group starts
    for j in range(1, n + 1):
        lo = max(0, j - most)
        starts = np.arange(lo, j, dtype=np.int64)
        costs = best[lo:j] + s[j - 1] * (overhead + (j - starts)) + overhead
        k = int(np.argmin(costs))  # the first minimum: the largest group among equals
        best[j], cut[j] = costs[k], lo + k
    if best[n] > (1 - SIZE_AWARE_SAVING) * even_cost:
        groups = even
    else:
        groups, j = [], n
        while j > 0:
            groups.append([cids[order[i]] for i in range(int(cut[j]), j)])
            j = int(cut[j])
        groups.reverse()
    costs = [group_cost(max(of[c] for c in g), len(g), overhead) for g in groups]
    return [groups[i] for i in sorted(range(len(groups)), key=lambda i: (-costs[i], i))]


def cohort_steps(client: ClientHalf, rows: list[int]) -> list[int] | None:
    """Each client's local steps from its rows (``ClientHalf.local_steps``), or None if the half
    cannot say (then groups are cut in client order)."""
    ask = getattr(client, "local_steps", None)
    if ask is None:
        return None
    memo: dict[int, int | None] = {}
    out = []
    for r in rows:
        if r not in memo:
            memo[r] = ask(r)
        if memo[r] is None:
            return None
        out.append(int(memo[r]))
    return out


def client_rows(client_data) -> list[int]:
    """Rows per client, without gathering any client's tensors where the population can say."""
    sizes = getattr(client_data, "sizes", None)
    return [int(n) for n in sizes()] if sizes is not None else [len(d) for d in client_data]


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
