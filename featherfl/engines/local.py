"""The in-process engine: clients run in this process.

The default, and the reference the Ray and Flower engines are checked against.
Client state lives in a dict keyed by client id and is saved in checkpoints.

Batched rounds (``engine.vectorize``) are cut into fixed groups of clients of similar
local steps (``engine.group_clients``, ``featherfl.engines.batched.plan_groups``) that
``engine.workers`` train side by side: this process and ``engine.workers - 1`` forked worker
processes, the groups assigned by expected cost (``engine.parallel = processes``,
featherfl/engines/processes.py), or threads, costliest group first; each group's replies are
decoded as soon as it is done. The groups never depend on the number of workers or how they
run, so neither do the results.
"""

from __future__ import annotations

import ctypes
import time
import traceback

import torch

from featherfl.engines.base import ClientFailure, ClientOutcome, Engine, ServerHeldStates, run_client
from featherfl.engines.batched import GroupThreads, can_batch, client_rows, cohort_steps, group_cost, plan_groups, run_group
from featherfl.engines.processes import GroupProcesses
from featherfl.threads import choose_parallel, choose_workers


#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Allocations below this come from the heap, whose freed memory is reused (glibc's largest).
MMAP_THRESHOLD = 32 << 20
#: Freed memory at the top of the heap kept for reuse up to this, rather than handed back to the system.
TRIM_THRESHOLD = 256 << 20
_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Let this process (and the workers it forks) reuse the memory of a round's large temporary
    arrays instead of mapping fresh pages for them every round (glibc ``mallopt``; elsewhere
    nothing changes). A round of a cohort of 500 allocates and frees arrays of megabytes (the
    stacked replies, the aggregation's products, the batched training's tensors): by default glibc
    maps each anew and every page of it faults on first write: on a 2-core virtual machine about
    9,000 page faults a round, and stacking 500 replies of 8,970 floats and weighting their sum took
    13-33 ms with them against 7 ms without. The cost: up to ``TRIM_THRESHOLD`` bytes of freed
    memory stay with the process. Once per process."""
    global _kept
    if _kept is None:
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):  # not glibc
            _kept = False
        else:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _kept = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _kept


class LocalEngine(ServerHeldStates, Engine):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        keep_freed_memory()
        self.client = self.algorithm.make_client()
        self.states: dict[int, dict] = {}
        self.workers = choose_workers(self.cfg["engine.workers"], torch.get_num_threads())
        self._threads: GroupThreads | None = None  # made on the first round with several groups
        self._rows: list[int] | None = None  # rows per client, for the groups' cost model
        self.parallel = choose_parallel(self.cfg["engine.parallel"])
        self._processes: GroupProcesses | None = None  # forked on the first round with several groups

    def _execute(self, rnd, jobs):
        if can_batch(self.cfg, self.client, len(jobs)):
            states = {cid: self.states.setdefault(cid, {}) for cid in jobs}  # here: the store is not thread-safe
            groups = plan_groups(list(jobs), self.cfg["engine.group_clients"], self._steps(list(jobs)), self.cfg["engine.group_overhead"])

            def one(client, group):
                return run_group(client, rnd, {c: jobs[c] for c in group}, {c: self.client_data[c] for c in group}, {c: states[c] for c in group}, self.run_id)

            if self.workers > 1 and len(groups) > 1 and self.parallel == "processes":
                done = self._in_processes(rnd, jobs, states, groups, one)
            elif self.workers > 1 and len(groups) > 1:
                done = self._group_threads().map(one, groups)
            else:
                done = (one(self.client, g) for g in groups)
            out: dict[int, ClientOutcome] = {}
            for got in done:
                if len(groups) > 1:  # while other groups still train: this group's replies decoded now
                    self.decode_early(rnd, got)
                out.update(got)
                if self.on_client is not None:
                    self.on_client(rnd, len(out), len(jobs))
            return {cid: out[cid] for cid in jobs}
        out = {}
        for cid, down in jobs.items():
            state = self.states.setdefault(cid, {})
            t = time.perf_counter()
            try:
                reply = run_client(self.client, rnd, down, self.client_data[cid], state, self.run_id)
            except Exception as e:  # a failing client must not end the run
                out[cid] = ClientOutcome.raised(ClientFailure.of(e, traceback.format_exc()), time.perf_counter() - t)
                continue
            out[cid] = ClientOutcome(reply=reply, seconds=time.perf_counter() - t)
            if self.on_client is not None:
                self.on_client(rnd, len(out), len(jobs))
        return out

    def _steps(self, cids: list[int]) -> list[int] | None:
        """The cohort's local steps, from each client's rows (read once per run)."""
        if self._rows is None:
            self._rows = client_rows(self.client_data)
        return cohort_steps(self.client, [self._rows[c] for c in cids])

    def _in_processes(self, rnd, jobs, states, groups, one):
        """The groups on ``workers - 1`` forked worker processes and this one (``one`` trains a group
        here, with this engine's client half), assigned by their expected cost; each group a worker
        trained has its updated states written back here."""
        if self._processes is None:
            self._processes = GroupProcesses(self.client, self.client_data, self.workers - 1, torch.get_num_threads(), self.cfg["engine.worker_timeout"])
        tasks = [({c: jobs[c] for c in g}, {c: states[c] for c in g}) for g in groups]
        for got, new in self._processes.run(rnd, tasks, self.run_id, local=lambda g: one(self.client, groups[g]), costs=self._costs(groups)):
            for cid, st in (new or {}).items():
                kept = states[cid]  # the store's own dict: replaced in place
                kept.clear()
                kept.update(st)
            yield got

    def _costs(self, groups: list[list[int]]) -> list[float]:
        """Each group's expected cost (``batched.group_cost``), or its size where steps are unknown."""
        steps = self._steps([c for g in groups for c in g])
        if steps is None:
            return [float(len(g)) for g in groups]
        of = dict(zip([c for g in groups for c in g], steps))
        return [float(group_cost(max(of[c] for c in g), len(g), self.cfg["engine.group_overhead"])) for g in groups]

    def _group_threads(self) -> GroupThreads:
        """The worker threads and their client halves: this engine's own half and ``workers - 1``
        more, each readied here (``can_update_many`` builds what a half builds lazily, e.g. FD's
        device model from the seed through torch's global generator, which threads must not share)."""
        if self._threads is None:
            halves = [self.client] + [self.algorithm.make_client() for _ in range(self.workers - 1)]
            if not all(h.can_update_many() for h in halves):
                raise RuntimeError("engine.workers: a copy of the client half cannot train batched where the first can")
            self._threads = GroupThreads(halves, torch.get_num_threads())
        return self._threads

    def close(self):
        if self._threads is not None:
            self._threads.close()
            self._threads = None
        if self._processes is not None:
            self._processes.close()
            self._processes = None
        super().close()

    def evaluate_clients(self, x, y):
        return self.evaluate_held(self.client.evaluate, x, y)
