"""Batched rounds on several worker threads (``engine.workers``): the groups a round is cut into
(``engine.group_clients``) never depend on the number of workers, so the metrics rows are the
same, bit for bit, for one worker or two; a failing client inside a group that runs beside
another is still its own. Clients of very different sizes are grouped by their local steps
(``batched.plan_groups``), and the rows still match the one-by-one path. Workers run as threads
or as forked processes (``engine.parallel``): the same rows either way; a worker process that
dies or hangs fails its own group's clients, and no worker outlives its run."""

import multiprocessing
import os
import sys
import threading
import time

import pytest
import torch

from featherfl import wire
from featherfl.config import ConfigError
from featherfl.algorithms import fedavg
from featherfl.engines import batched, local, processes
from featherfl.engines.local import LocalEngine
from featherfl.experiment import prepare_client, prepare, run_experiment
from featherfl.schema import build_config
from featherfl.threads import choose_parallel, choose_workers
from support.rows import metric_rows

REAL_UPDATE_MANY = fedavg.WeightsClient.update_many
#: engine.parallel=processes forks its workers: Linux (and /proc for the checks here)
needs_fork = pytest.mark.skipif(not (processes.fork_available() and os.path.isdir("/proc/self")), reason="worker processes need fork and /proc (Linux)")

#: 9 clients a round in groups of at most 4: three groups (3 + 3 + 3), so two workers share every round
SMALL = [("rounds", 3), ("clients", 9), ("engine.threads", 1), ("engine.group_clients", 4), ("data.max_train", 600), ("data.max_test", 200), ("log.plots", False)]
METHOD = {
    "fedavg": [("algorithm", "fedavg"), ("fedavg.max_steps", 4)],
    "fd": [("algorithm", "fd"), ("fd.local_steps", 6), ("partition.name", "dirichlet")],
}


def _rows(tmp_path, name, *extra):
    out, _ = run_experiment(build_config(None, SMALL + list(extra)), tmp_path / name)
    return metric_rows(out)


def test_groups_are_fixed_by_the_cohort_alone():
    assert batched.client_groups(list(range(500)), 256) == [list(range(250)), list(range(250, 500))]
    assert batched.client_groups([4, 9, 11], 256) == [[4, 9, 11]]  # a cohort that fits: one call, as before groups
    assert [len(g) for g in batched.client_groups(list(range(10)), 4)] == [4, 3, 3]
    assert [len(g) for g in batched.client_groups(list(range(9)), 4)] == [3, 3, 3]
    assert batched.client_groups([], 4) == []
    assert batched.client_groups([7], 1) == [[7]]


def test_groups_follow_the_clients_local_steps():
    cost = batched.group_cost
    # nine clients of 3 steps and one of 90: the long one alone, the rest together, costliest first
    cids, steps = list(range(10)), [3] * 4 + [90] + [3] * 5
    assert batched.plan_groups(cids, 256, steps, 16) == [[4], [0, 1, 2, 3, 5, 6, 7, 8, 9]]
    assert cost(90, 1, 16) + cost(3, 9, 16) < 0.8 * cost(90, 10, 16)
    # equal steps, or a spread that saves less than a fifth: the client-order groups, as without steps
    assert batched.plan_groups(list(range(500)), 256, [6] * 500, 16) == batched.client_groups(list(range(500)), 256)
    assert batched.plan_groups(cids, 4, [6, 7] * 5, 16) == batched.client_groups(cids, 4)
    assert batched.plan_groups(cids, 4, None, 16) == batched.client_groups(cids, 4)
    # sorted by (steps, client id); at most engine.group_clients each; every client exactly once
    steps = [1, 50, 2, 1, 48, 2, 49, 1, 2, 50]
    groups = batched.plan_groups(cids, 3, steps, 0)
    assert sorted(c for g in groups for c in g) == cids and max(len(g) for g in groups) <= 3
    # overhead 0: only padding counts, so equal steps share a call (the first cheapest cut: the largest group)
    assert groups == [[1, 9], [6], [4], [2, 5, 8], [0, 3, 7]]
    # a large overhead: fewer calls; of two equally cheap cuts, the one whose last group is larger
    assert batched.plan_groups(cids, 3, steps, 100) == [[6, 1, 9], [4], [2, 5, 8], [0, 3, 7]]
    with pytest.raises(ValueError, match="step counts"):
        batched.plan_groups(cids, 4, [1, 2], 16)


#: a power-law population (a few clients hold most rows) at batch 10, one local epoch: steps from 1 to dozens
POWER = [("rounds", 3), ("clients", 24), ("engine.threads", 1), ("data.max_train", 1400), ("data.max_test", 200), ("log.plots", False),
         ("algorithm", "fedavg"), ("partition.name", "power-law"), ("partition.min_samples", 2), ("fedavg.batch_size", 10), ("fedavg.local_epochs", 1)]


def _power_rows(tmp_path, name, *extra):
    out, _ = run_experiment(build_config(None, POWER + list(extra)), tmp_path / name)
    return metric_rows(out)


def test_a_power_law_cohort_is_grouped_by_size_and_matches_one_by_one(tmp_path, monkeypatch):
    # a CNN: its batched steps compute every client of the call (a plain MLP's compute only the
    # clients still training, so it is not grouped by size: the test after this one)
    monkeypatch.setattr(sys.modules[__name__], "POWER", POWER + [("model.name", "lenet")])
    cfg = build_config(None, POWER)
    p = prepare(cfg)
    sizes = [len(d) for d in p.client_data]
    steps = [-(-n // 10) for n in sizes]
    assert max(steps) >= 8 * min(steps)  # the population this test is about
    expected = batched.plan_groups(list(range(24)), 256, steps, 16)
    assert len(expected) > 1 and expected != batched.client_groups(list(range(24)), 256)
    for a, b in zip(expected, expected[1:]):  # contiguous runs of the sorted cohort, costliest first
        assert batched.group_cost(max(steps[c] for c in a), len(a), 16) >= batched.group_cost(max(steps[c] for c in b), len(b), 16)
    calls = []
    real = batched.run_clients_batched
    monkeypatch.setattr(batched, "run_clients_batched", lambda c, r, jobs, *a: calls.append((r, list(jobs))) or real(c, r, jobs, *a))
    one = _power_rows(tmp_path, "one", ("engine.workers", 1))
    assert [g for r, g in calls] == expected * 3  # every round, in that order
    calls.clear()
    two = _power_rows(tmp_path, "two", ("engine.workers", 2), ("engine.parallel", "threads"))
    assert one == two and sorted(map(tuple, (g for r, g in calls))) == sorted(map(tuple, expected * 3))
    if processes.fork_available():
        assert _power_rows(tmp_path, "processes", ("engine.workers", 2), ("engine.parallel", "processes")) == one
    off = _power_rows(tmp_path, "off", ("engine.vectorize", "off"))
    assert [r["bytes_up"] for r in one] == [r["bytes_up"] for r in off]
    for a, o in zip(one, off):  # test_vectorized's tolerance for batched against one by one
        assert a["clients_ok"] == o["clients_ok"] == 24
        assert abs(a["accuracy"] - o["accuracy"]) < 0.01 and abs(a["loss"] - o["loss"]) < 1e-3


def test_a_plain_mlp_cohort_is_not_grouped_by_size(tmp_path, monkeypatch):
    """Its batched steps compute only the clients still training, so grouping by steps would buy
    nothing: one group in client order, rows identical for one worker or two."""
    assert prepare_client(build_config(None, POWER), 0).client.local_steps(50) is None
    calls = []
    real = batched.run_clients_batched
    monkeypatch.setattr(batched, "run_clients_batched", lambda c, r, jobs, *a: calls.append((r, list(jobs))) or real(c, r, jobs, *a))
    one = _power_rows(tmp_path, "one", ("engine.workers", 1))
    assert [g for r, g in calls] == [list(range(24))] * 3
    assert _power_rows(tmp_path, "two", ("engine.workers", 2), ("engine.parallel", "threads"), ("engine.group_clients", 12)) == one


@pytest.mark.parametrize("method", sorted(METHOD))
def test_rows_are_identical_for_one_worker_and_two_threads(tmp_path, method, monkeypatch):
    seen: dict[int, set] = {1: set(), 2: set()}
    groups: dict[int, set] = {1: set(), 2: set()}
    workers = [1]
    real = batched.run_clients_batched

    def spy(client, rnd, jobs, *a):
        # each worker thread keeps the run's one intra-op thread (OpenMP's count is per thread)
        assert "omp_get_max_threads() : 1\n" in torch.__config__.parallel_info()
        seen[workers[0]].add((threading.get_ident(), id(client)))
        groups[workers[0]].add((rnd, tuple(jobs)))
        return real(client, rnd, jobs, *a)

    monkeypatch.setattr(batched, "run_clients_batched", spy)
    one = _rows(tmp_path, "one", *METHOD[method], ("engine.workers", 1))
    workers[0] = 2
    two = _rows(tmp_path, "two", *METHOD[method], ("engine.workers", 2), ("engine.parallel", "threads"))
    assert one == two
    assert groups[1] == groups[2] and len(groups[1]) == 9  # the same three groups each round, whoever ran them
    assert all(r["clients_ok"] == 9 for r in one) and one[-1]["accuracy"] is not None
    assert len({t for t, _ in seen[1]}) == 1  # one worker: every group in the calling thread
    assert len({t for t, _ in seen[2]}) == 2 and len({c for _, c in seen[2]}) == 2  # two threads, a client half each


@needs_fork
@pytest.mark.parametrize("method", sorted(METHOD))
def test_rows_are_identical_for_one_worker_and_two_processes(tmp_path, method, monkeypatch):
    """Two workers: the engine's process and one forked worker, each training its share of the groups."""
    started, here = [], []
    real = processes.GroupProcesses._start
    monkeypatch.setattr(processes.GroupProcesses, "_start", lambda self, i: real(self, i) or started.append(self._procs[i]))
    real_group = batched.run_group
    monkeypatch.setattr(batched, "run_group", lambda *a: here.append(os.getpid()) or real_group(*a))  # the fork copies it: counted only here
    monkeypatch.setattr(local, "run_group", batched.run_group)
    one = _rows(tmp_path, "one", *METHOD[method], ("engine.workers", 1))
    assert not started
    alone = len(here)
    here.clear()
    two = _rows(tmp_path, "two", *METHOD[method], ("engine.workers", 2), ("engine.parallel", "processes"))
    assert one == two and all(r["clients_ok"] == 9 for r in two)
    assert len(started) == 1  # one worker forked, once for the run, not per round
    assert 0 < len(here) < alone  # the engine's process trained some of the groups, the worker the others
    assert all(p.exitcode is not None for p in started) and not multiprocessing.active_children()  # stopped at the end


@needs_fork
def test_rows_are_identical_for_three_workers_as_processes(tmp_path, monkeypatch):
    started = []
    real = processes.GroupProcesses._start
    monkeypatch.setattr(processes.GroupProcesses, "_start", lambda self, i: real(self, i) or started.append(self._procs[i]))
    one = _rows(tmp_path, "one", *METHOD["fedavg"], ("engine.workers", 1))
    three = _rows(tmp_path, "three", *METHOD["fedavg"], ("engine.workers", 3), ("engine.parallel", "processes"))
    assert one == three and all(r["clients_ok"] == 9 for r in three)
    assert len(started) == 2 and not multiprocessing.active_children()


def test_groups_are_assigned_by_cost_with_the_engine_last_on_a_tie():
    assert processes.assign([5, 5], 1) == [0, 1]  # two equal groups: one forked worker, the engine's process
    assert processes.assign([5, 5, 5], 1) == [0, 1, 0]
    assert processes.assign([9, 4, 3, 2], 1) == [0, 1, 1, 1]  # the costliest alone against the rest
    assert processes.assign([6, 5, 4], 2) == [0, 1, 2]


@pytest.mark.parametrize("parallel", ["threads", pytest.param("processes", marks=needs_fork)])
def test_two_worker_runs_repeat_exactly(tmp_path, parallel):
    a = _rows(tmp_path, "a", *METHOD["fedavg"], ("engine.workers", 2), ("engine.parallel", parallel))
    b = _rows(tmp_path, "b", *METHOD["fedavg"], ("engine.workers", 2), ("engine.parallel", parallel))
    assert a == b


def _engine(*extra, data=None):
    cfg = build_config(None, SMALL + METHOD["fedavg"] + list(extra))
    p = prepare(cfg)
    return LocalEngine(cfg, p.algorithm, data(list(p.client_data)) if data else p.client_data, wire.Ledger(), p.ctx.run_id)


ENGINE_PID = os.getpid()


def _dies_on(cid):
    def update_many(self, rnd, downs, *a):
        if cid in downs and os.getpid() != ENGINE_PID:  # in a forked worker only
            os._exit(3)
        return REAL_UPDATE_MANY(self, rnd, downs, *a)

    return update_many


def _hangs_on_client_7(self, rnd, downs, *a):
    if 7 in downs and os.getpid() != ENGINE_PID:
        time.sleep(60)
    return REAL_UPDATE_MANY(self, rnd, downs, *a)


@needs_fork
def test_a_worker_process_that_dies_fails_its_group_and_is_replaced(monkeypatch):
    """Groups 0-2, 3-5, 6-8: the forked worker trains the first and the last, the engine's process
    the middle one (``processes.assign``). The worker dies on its second group: only that group's
    clients fail, counted as failed clients, and the next round forks a fresh worker."""
    monkeypatch.setattr(fedavg.WeightsClient, "update_many", _dies_on(7))  # the fork inherits it
    eng = _engine(("engine.workers", 2), ("engine.parallel", "processes"))
    try:
        first = eng.run_round(1)
        pids = eng._processes.pids()
        second = eng.run_round(2)
        again = eng._processes.pids()
    finally:
        eng.close()
    for stats in (first, second):
        assert sorted(e["cid"] for e in stats.errors) == [6, 7, 8]  # client 7's group (3 + 3 + 3 clients)
        assert {e["type"] for e in stats.errors} == {"WorkerLost"} and "exited (code 3)" in stats.errors[0]["message"]
        assert stats.clients_ok == 6 and stats.clients_dropped == 3 and stats.dropped_reasons == {"error": 3} and stats.aggregated
    assert pids == [] and len(again) == 0  # the worker died in each round; a fresh one was forked for round 2
    assert not multiprocessing.active_children()


@needs_fork
def test_a_worker_that_dies_with_its_only_group_fails_that_group(monkeypatch):
    """Three workers, three groups: each forked worker one group, the engine's process the third
    (no supplying thread). The worker with clients 3-5 dies: those three fail, counted; the rest
    aggregate."""
    monkeypatch.setattr(fedavg.WeightsClient, "update_many", _dies_on(4))
    eng = _engine(("engine.workers", 3), ("engine.parallel", "processes"))
    try:
        stats = eng.run_round(1)
    finally:
        eng.close()
    assert sorted(e["cid"] for e in stats.errors) == [3, 4, 5] and {e["type"] for e in stats.errors} == {"WorkerLost"}
    assert stats.clients_ok == 6 and stats.dropped_reasons == {"error": 3} and stats.aggregated and not multiprocessing.active_children()


@needs_fork
def test_a_worker_that_died_leaves_its_next_group_to_the_engine(monkeypatch):
    """The worker dies on its first group (clients 0-2): that group fails; its second group (6-8)
    is trained in the engine's process, so only the dead worker's own group is lost."""
    monkeypatch.setattr(fedavg.WeightsClient, "update_many", _dies_on(1))
    eng = _engine(("engine.workers", 2), ("engine.parallel", "processes"))
    try:
        stats = eng.run_round(1)
    finally:
        eng.close()
    assert sorted(e["cid"] for e in stats.errors) == [0, 1, 2] and {e["type"] for e in stats.errors} == {"WorkerLost"}
    assert stats.clients_ok == 6 and stats.aggregated and not multiprocessing.active_children()


@needs_fork
def test_a_worker_process_past_the_timeout_is_stopped(monkeypatch):
    monkeypatch.setattr(fedavg.WeightsClient, "update_many", _hangs_on_client_7)
    eng = _engine(("engine.workers", 2), ("engine.parallel", "processes"), ("engine.worker_timeout", 1.0))
    t = time.monotonic()
    try:
        stats = eng.run_round(1)
    finally:
        eng.close()
    assert time.monotonic() - t < 30
    assert sorted(e["cid"] for e in stats.errors) == [6, 7, 8] and "engine.worker_timeout=1" in stats.errors[0]["message"]
    assert stats.clients_ok == 6 and not multiprocessing.active_children()


KILLED_PARENT = """
import sys, time
sys.path[:0] = [{tests!r}]
from test_workers import _engine
eng = _engine(("engine.workers", 3), ("engine.parallel", "processes"))
eng.run_round(1)
print(*eng._processes.pids(), flush=True)
time.sleep(120)
"""


@needs_fork
def test_workers_die_with_a_killed_parent():
    """A run killed outright (SIGKILL: no close, no atexit) leaves no worker behind."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    code = KILLED_PARENT.format(tests=str(Path(__file__).parent))
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()

    def running(pid):  # gone, or a zombie nobody reaped yet: not running
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(map(running, pids)):
        time.sleep(0.1)
    assert not [p for p in pids if running(p)]


@needs_fork
@pytest.mark.parametrize("workers", [2, 3])  # a forked worker with a second group (a supplying thread), or none
def test_workers_are_stopped_when_a_round_is_interrupted(workers):
    eng = _engine(("engine.workers", workers), ("engine.parallel", "processes"))

    def interrupt(rnd, done, total):
        raise KeyboardInterrupt

    eng.on_client = interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            eng.run_round(1)
        assert len(eng._processes.pids()) <= workers - 1
        t = time.monotonic()
    finally:
        eng.close()
    assert not multiprocessing.active_children() and time.monotonic() - t < processes.STOP_GRACE


def test_a_cohort_within_one_group_trains_in_one_call(tmp_path, monkeypatch):
    """engine.group_clients at or above the cohort: one batched call a round, as before groups existed."""
    calls = []
    real = batched.run_clients_batched
    monkeypatch.setattr(batched, "run_clients_batched", lambda c, r, jobs, *a: calls.append(len(jobs)) or real(c, r, jobs, *a))
    _rows(tmp_path, "whole", *METHOD["fedavg"], ("engine.group_clients", 9), ("engine.workers", 2))
    assert calls == [9, 9, 9]


@pytest.mark.parametrize("workers,parallel", [(1, "threads"), (2, "threads"), pytest.param(2, "processes", marks=needs_fork)])
def test_a_failing_client_in_a_parallel_group_is_its_own(workers, parallel):
    cfg = build_config(None, SMALL + METHOD["fedavg"] + [("engine.workers", workers), ("engine.parallel", parallel)])
    p = prepare(cfg)
    data = list(p.client_data)  # the population gathers a client's rows on demand: change a copy
    data[4].x = data[4].x.reshape(len(data[4].x), -1)[:, :5]  # inputs the model cannot take: its forward raises
    eng = LocalEngine(cfg, p.algorithm, data, wire.Ledger(), p.ctx.run_id)
    try:
        stats = eng.run_round(1)
    finally:
        eng.close()
    assert [e["cid"] for e in stats.errors] == [4]
    assert stats.dropped_reasons == {"error": 1} and stats.clients_ok == 8 and stats.aggregated


def test_worker_count_is_checked_and_chosen():
    with pytest.raises(ConfigError, match="engine.workers"):
        build_config(None, [("engine.workers", -1)])
    with pytest.raises(ConfigError, match="engine.group_clients"):
        build_config(None, [("engine.group_clients", 0)])
    with pytest.raises(ConfigError, match="engine.parallel"):
        build_config(None, [("engine.parallel", "fibers")])
    assert choose_parallel("threads") == "threads" and choose_parallel("processes") == "processes"
    assert choose_parallel("auto") == ("processes" if processes.fork_available() else "threads")
    assert choose_workers(3, 1) == 3
    assert choose_workers(0, 4) == 1  # torch's own threads already use the cores
    assert 1 <= choose_workers(0, 1) <= len(__import__("os").sched_getaffinity(0))


def test_a_message_carries_its_replies_in_shared_memory_or_on_the_pipe():
    import mmap

    blobs = [b"a" * 10, b"", b"bcd" * 7]
    area = mmap.mmap(-1, 64)
    raw = processes._pack({"x": 1}, blobs, None, area)
    assert b"bcd" not in raw  # the replies went to the shared memory
    header, got, states = processes._unpack(bytearray(raw), area)
    assert header["x"] == 1 and got == blobs and states is None and all(type(b) is bytes for b in got)
    small = mmap.mmap(-1, 16)  # no room: over the pipe
    raw = processes._pack({"x": 2}, blobs, None, small)
    assert b"bcd" in raw and processes._unpack(raw, small)[1] == blobs
    with pytest.raises(OSError):
        processes._unpack(processes._pack({}, blobs, None, area), None)  # shared memory it does not have


@needs_fork
def test_rows_are_identical_when_replies_come_over_the_pipe(tmp_path, monkeypatch):
    monkeypatch.setattr(processes, "SHARED_BYTES", 4096)  # too small for a group's replies
    one = _rows(tmp_path, "one", *METHOD["fedavg"], ("engine.workers", 1))
    two = _rows(tmp_path, "two", *METHOD["fedavg"], ("engine.workers", 2), ("engine.parallel", "processes"))
    assert one == two and all(r["clients_ok"] == 9 for r in two)
