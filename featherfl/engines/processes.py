"""Worker processes that train a round's batched client groups (``engine.parallel = processes``).

Threads share one interpreter: torch kernels release the GIL, but a batched step of small
models is mostly Python and dispatch, so two threads on two cores measured barely faster than
one (benchmarks/results/cores.md). Here ``engine.workers`` means the engine's own process and
``engine.workers - 1`` processes forked once per run from the engine's process when the first
round with several groups starts:

- what a forked worker needs it inherits: the client half (a copy: a half's model is scratch
  space) and the client data, whose arrays the fork shares copy-on-write: nothing writes them, so
  the pages stay the parent's (a client's rows are gathered per group, as in the parent);
- the groups, costliest first, are assigned by :func:`assign` from their expected costs; the
  engine's process trains its own groups with its own client half while a thread of it keeps the
  forked workers supplied (it waits on pipes, so it costs the engine's core little);
- a forked worker gets one group at a time over its pipe: a JSON header (round, run id, grad mode,
  client ids, which downlink each client gets), each distinct downlink's bytes once, and the
  group's client states written by ``torch.save`` and read back with ``weights_only=True``, as the
  disk state store reads states: nothing on a pipe is unpickled into arbitrary objects. It
  answers with :func:`featherfl.engines.batched.run_group`'s outcomes (reply bytes, failure,
  seconds) and the updated states, which the engine writes back into its own state store.

A worker that dies (killed, out of memory) or takes longer than ``engine.worker_timeout``
seconds for one group is stopped and its group's clients count as failed clients
(``WorkerLost``), like any client that raised; a group it had not started is trained by the
engine's process instead, and the next round forks a fresh worker (from the engine's thread: a
worker dies with the thread that forked it, ``PR_SET_PDEATHSIG``). Workers
ignore SIGINT (Ctrl-C stops the run in the parent, which then stops them), die with the parent
(``PR_SET_PDEATHSIG`` on Linux; otherwise they leave at the end of their pipe), and are stopped
by :meth:`GroupProcesses.close`, which the engine calls when the run ends, also on errors.
"""

from __future__ import annotations

import ctypes
import gc
import io
import json
import mmap
import multiprocessing
import os
import queue
import signal
import socket
import struct
import threading
import time
import traceback
from multiprocessing.connection import wait
from typing import Iterator

import torch

from featherfl.algorithms.base import ClientHalf
from featherfl.engines.base import ClientFailure, ClientOutcome

#: Seconds a worker gets to leave after being asked to stop, before it is killed.
STOP_GRACE = 5.0

#: Bytes of socket buffer asked for each end of a worker's pipe.
PIPE_BUFFER = 4 << 20

#: Bytes of memory each worker shares with the engine's process for a group's replies; a group
#: whose replies do not fit sends them over the pipe.
SHARED_BYTES = 128 << 20


#: In place of a group's outcomes: train this group in the engine's process.
_HERE = object()


class _Stopped(Exception):
    """The engine's thread asked the thread supplying the workers to stop."""


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _pack(header: dict, blobs: list[bytes] = (), states: dict | None = None, area=None) -> bytes:
    """One pipe message: a JSON header, then the byte blobs (downlinks or replies) back to back, then
    the clients' states (``torch.save``) when any is non-empty. Blobs travel as they are: a cohort's
    replies cost a copy, not a serialisation per reply. With ``area`` (the worker's shared memory)
    and room in it, the blobs are written there instead and the message says so."""
    st = _torch_bytes(states) if states and any(states.values()) else b""
    sizes = [len(b) for b in blobs]
    shared = area is not None and sum(sizes) <= len(area)
    if shared:
        pos = 0
        for b in blobs:
            area[pos : pos + len(b)] = b
            pos += len(b)
    head = json.dumps({**header, "blobs": sizes, "shared": shared, "states": len(st)}).encode()
    return b"".join([struct.pack("<Q", len(head)), head, *([] if shared else blobs), st])  # one copy of the blobs


def _receive(conn) -> bytearray:
    """One message of ``conn.send_bytes``, read straight into one buffer (``Connection.recv_bytes``
    gathers it in pieces and copies it twice): the same framing, the same EOFError / OSError."""
    fd = conn.fileno()
    size = struct.unpack("!i", _read_exactly(fd, bytearray(4), True))[0]
    if size == -1:
        size = struct.unpack("!Q", _read_exactly(fd, bytearray(8), False))[0]
    return _read_exactly(fd, bytearray(size), False)


def _read_exactly(fd: int, buf: bytearray, first: bool) -> bytearray:
    view, got = memoryview(buf), 0
    while got < len(buf):
        n = os.readv(fd, [view[got:]])
        if n == 0:
            if first and got == 0:
                raise EOFError
            raise OSError("got end of file during message")
        got += n
    return buf


def _unpack(raw: bytes, area=None) -> tuple[dict, list[bytes], dict | None]:
    """The header, the blobs and the states of :func:`_pack`'s message (its blobs from ``area`` where
    the message says they are there); states are read with ``weights_only=True`` (plain containers
    and tensors only)."""
    (n,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(bytes(raw[8 : 8 + n]))
    pos, blobs = 8 + n, []
    if header.get("shared"):
        if area is None or sum(header["blobs"]) > len(area):
            raise OSError("a worker's answer names shared memory it does not have")
        at = 0
        with memoryview(area) as view:
            for size in header["blobs"]:
                blobs.append(bytes(view[at : at + size]))  # one copy: each reply its own bytes
                at += size
    else:
        with memoryview(raw) as view:
            for size in header["blobs"]:
                blobs.append(bytes(view[pos : pos + size]))
                pos += size
    states = None
    if header["states"]:
        states = torch.load(io.BytesIO(raw[pos : pos + header["states"]]), map_location="cpu", weights_only=True)
    return header, blobs, states


def _failure_out(f: ClientFailure | None):
    return None if f is None else [f.type, f.message, f.traceback]


def _failure_in(t) -> ClientFailure | None:
    return None if t is None else ClientFailure(str(t[0]), str(t[1]), None if t[2] is None else str(t[2]))


def _answer(out: dict[int, ClientOutcome], states: dict, area=None) -> bytes:
    cids = list(out)
    blobs = [out[c].reply for c in cids if out[c].reply is not None] + [d for c in cids for d in out[c].duplicates]
    header = {
        "status": "ok",
        "cids": cids,
        "replied": [out[c].reply is not None for c in cids],
        "errors": [out[c].error for c in cids],
        "seconds": [float(out[c].seconds) for c in cids],
        "failures": [_failure_out(out[c].failure) for c in cids],
        "duplicates": [len(out[c].duplicates) for c in cids],
    }
    return _pack(header, blobs, states, area)


def _outcomes_in(header: dict, blobs: list[bytes]) -> dict[int, ClientOutcome]:
    it = iter(blobs)
    replies = [next(it) if r else None for r in header["replied"]]
    out = {}
    for k, cid in enumerate(header["cids"]):
        dups = [next(it) for _ in range(header["duplicates"][k])]
        out[int(cid)] = ClientOutcome(reply=replies[k], error=header["errors"][k], seconds=float(header["seconds"][k]), failure=_failure_in(header["failures"][k]), duplicates=dups)
    return out


def _group_message(rnd: int, run_id: int, grad: bool, jobs: dict[int, bytes], states: dict) -> bytes:
    """A group for a worker: each distinct downlink once (a round's clients mostly share one global
    model), the clients' indices into them, and their states."""
    index: dict[int, int] = {}
    blobs: list[bytes] = []
    downs = []
    for b in jobs.values():
        k = index.get(id(b))
        if k is None:
            k = index[id(b)] = len(blobs)
            blobs.append(b)
        downs.append(k)
    return _pack({"rnd": rnd, "run_id": run_id, "grad": grad, "cids": list(jobs), "downs": downs}, blobs, states)


def assign(costs: list[float], workers: int) -> list[int]:
    """Which of ``workers`` forked workers (0 .. workers - 1) or the engine's own process (``workers``)
    trains each group, given the groups' expected costs in the order they are handed out: each
    group to the least loaded so far, a forked worker before the engine's process on a tie (the
    engine also has the round's serial work). Depends on the costs alone: the same every round."""
    load = [0.0] * (workers + 1)
    out = []
    for c in costs:
        lane = min(range(workers + 1), key=lambda i: (load[i], i))
        load[lane] += c
        out.append(lane)
    return out


def _shared_area():
    """Memory the engine's process and one worker share (anonymous, mapped before the fork): the
    worker writes a group's replies there and the engine copies each out once, instead of both
    copying them through the pipe. Pages exist only once written. None where it cannot be had."""
    try:
        return mmap.mmap(-1, SHARED_BYTES)
    except (OSError, ValueError):
        return None


def _widen(conn) -> None:
    """A larger socket buffer for a worker's pipe (a group's replies are megabytes): fewer, larger
    reads and writes. Best effort: the system's limits apply."""
    try:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
    except OSError:
        return
    with sock:
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, PIPE_BUFFER)
            except OSError:
                pass


def fork_available() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def _die_with_parent(parent: int) -> None:
    """Linux: SIGKILL this process when the parent exits, even if the parent is killed."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent left before the call took effect
        os._exit(1)


def _serve(conn, inherited: list, client: ClientHalf, client_data, torch_threads: int, parent: int, area=None) -> None:
    """A worker's loop: one group per message until told to stop (None) or the pipe closes."""
    from featherfl.engines.batched import run_group

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    gc.freeze()  # what the fork inherited is never traversed by this process's collector: its pages stay shared, not copied
    for c in inherited:  # the engine's pipe ends, copied by the fork: closed, so the pipe ends when the engine goes
        c.close()
    torch.set_num_threads(torch_threads)
    while True:
        try:
            header, blobs, states = _unpack(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if header.get("stop"):
            return
        cids = [int(c) for c in header["cids"]]
        jobs = {cid: blobs[int(k)] for cid, k in zip(cids, header["downs"])}  # a downlink many clients share came once
        states = {cid: (states or {}).get(cid, {}) for cid in cids}
        try:
            with torch.set_grad_enabled(bool(header["grad"])):
                out = run_group(client, int(header["rnd"]), jobs, {cid: client_data[cid] for cid in jobs}, states, int(header["run_id"]))
            answer = _answer(out, states, area)
        except BaseException as e:  # run_group keeps a client's failure its own; anything else fails the group
            answer = _pack({"status": "failed", "failure": _failure_out(ClientFailure.of(e, traceback.format_exc()))})
        try:
            conn.send_bytes(answer)
        except (BrokenPipeError, OSError):
            return


class GroupProcesses:
    """``workers`` forked worker processes that run client groups (see the module's docstring)."""

    def __init__(self, client: ClientHalf, client_data, workers: int, torch_threads: int, timeout: float):
        if not fork_available():
            raise RuntimeError("engine.parallel=processes needs the fork start method (Linux); use engine.parallel=threads")
        self._mp = multiprocessing.get_context("fork")
        self._client = client
        self._data = client_data
        self._threads = torch_threads
        self._timeout = timeout
        self._procs: list = [None] * workers
        self._conns: list = [None] * workers
        self._areas: list = [None] * workers  # each worker's shared memory for its answers' replies
        self._busy: dict[int, tuple[int, float]] = {}  # worker -> (group, start) of the round under way

    def _start(self, i: int) -> None:
        ours, theirs = self._mp.Pipe(duplex=True)
        _widen(ours)
        _widen(theirs)
        inherited = [c for c in self._conns if c is not None] + [ours]
        area = _shared_area()
        p = self._mp.Process(
            target=_serve, args=(theirs, inherited, self._client, self._data, self._threads, os.getpid(), area), name=f"featherfl-group-{i}", daemon=True
        )
        p.start()
        theirs.close()
        self._procs[i], self._conns[i], self._areas[i] = p, ours, area

    def _stop(self, i: int, kill: bool) -> None:
        p, c, area = self._procs[i], self._conns[i], self._areas[i]
        self._procs[i] = self._conns[i] = self._areas[i] = None
        if area is not None:
            area.close()
        if p is None:
            return
        if not kill:
            try:
                c.send_bytes(_pack({"stop": True}))
            except (BrokenPipeError, OSError):
                pass
            p.join(STOP_GRACE)
        if p.is_alive():
            p.kill()
            p.join()
        c.close()

    def run(self, rnd: int, groups: list[tuple[dict[int, bytes], dict[int, dict]]], run_id: int, local=None, costs: list[float] | None = None) -> Iterator[tuple[dict[int, ClientOutcome], dict[int, dict] | None]]:
        """Each group's ``(outcomes, updated states)`` as it finishes (states None where the group
        failed as a whole, or where ``local`` trained it: its states were updated in place);
        ``groups`` are (jobs, states) in the order to hand them out.

        Without ``local``, the forked workers take the groups in that order, each the next one when
        idle. With ``local`` (a function that trains group ``g`` in this process), this process is
        one more worker: the groups are assigned by :func:`assign` from ``costs`` (their expected
        costs) and each forked worker is sent its first group; this process trains its own groups
        meanwhile, then takes the forked workers' answers as they come. Where a forked worker has
        more than one group, a thread of this process keeps it supplied and gathers its answers (it
        waits on pipes: no work of its own to speak of)."""
        grad = torch.is_grad_enabled()  # a thread's own: read here, in the engine's thread
        if local is None:
            todo = list(range(len(groups)))
            yield from self._remote(rnd, groups, run_id, grad, lambda i: todo.pop(0) if todo else None)
            return
        lanes = assign(list(costs) if costs is not None else [float(len(j)) for j, _ in groups], len(self._procs))
        mine = [g for g, lane in enumerate(lanes) if lane == len(self._procs)]
        theirs = {i: [g for g, lane in enumerate(lanes) if lane == i] for i in range(len(self._procs))}
        if not any(theirs.values()):
            for g in mine:
                yield local(g), None
            return
        for i in theirs:  # forked here, not in the supplying thread: a worker dies with the thread that forked it (PR_SET_PDEATHSIG)
            if theirs[i] and (self._procs[i] is None or not self._procs[i].is_alive()):
                self._stop(i, kill=True)
                self._start(i)
        busy: dict[int, tuple[int, float]] = {}
        self._busy = busy  # what close() stops at once if the round ends in an error
        lost = []  # each forked worker's first group is sent from here: the supplying thread starts by waiting
        for i in theirs:
            if theirs[i]:
                g = theirs[i].pop(0)
                got = self._send(i, g, rnd, run_id, grad, groups, busy)
                if got is not None:
                    lost.append(got)
        if not any(theirs.values()):  # no worker has a second group: no thread needed to keep them supplied
            try:
                for got in lost:
                    yield got, None
                for g in mine:
                    yield local(g), None
            except BaseException:  # an error or an interrupt here: no worker is left training for nobody
                for i in list(busy):
                    self._stop(i, kill=True)
                busy.clear()
                raise
            yield from self._remote(rnd, groups, run_id, grad, lambda i: None, None, busy)
            return
        answers: queue.SimpleQueue = queue.SimpleQueue()
        wake_r, wake_w = os.pipe()
        stopping = threading.Event()

        def supply():
            try:
                for got in self._remote(rnd, groups, run_id, grad, lambda i: theirs[i].pop(0) if theirs[i] else None, (stopping, wake_r), busy):
                    answers.put((True, got))
                answers.put((True, None))
            except BaseException as e:  # handed to the engine's thread, which raises it
                answers.put((False, e))

        helper = threading.Thread(target=supply, name="featherfl-groups", daemon=True)
        helper.start()
        try:
            for got in lost:
                yield got, None
            for g in mine:
                yield local(g), None
            while True:
                ok, got = answers.get()
                if not ok:
                    raise got
                if got is None:
                    break
                if got[0] is _HERE:  # a worker that died before this group: trained here instead
                    yield local(got[1]), None
                    continue
                yield got
        finally:
            if helper.is_alive():  # an error or an interrupt in this thread: no worker is left training for nobody
                stopping.set()
                os.write(wake_w, b"x")
            helper.join()
            os.close(wake_r)
            os.close(wake_w)

    def _send(self, i: int, g: int, rnd: int, run_id: int, grad: bool, groups, busy: dict) -> dict[int, ClientOutcome] | None:
        """Group ``g`` to worker ``i`` (then busy with it); its clients' outcomes if it cannot be sent."""
        jobs, states = groups[g]
        try:
            self._conns[i].send_bytes(_group_message(rnd, run_id, grad, jobs, states))
        except (BrokenPipeError, OSError) as e:
            self._stop(i, kill=True)
            return self._lost(jobs, f"worker process could not be given its group ({e.__class__.__name__})")
        busy[i] = (g, time.monotonic())
        return None

    def _remote(self, rnd: int, groups, run_id: int, grad: bool, pick, stop=None, busy: dict | None = None) -> Iterator[tuple[dict[int, ClientOutcome], dict[int, dict] | None]]:
        """The forked workers' part of a round: ``pick(i)`` is the next group for idle worker ``i``
        (None: nothing more for it); ``stop`` (an event and a file descriptor that wakes the wait)
        ends the loop early, stopping the workers still training. With ``stop`` (run from the
        supplying thread) a worker found dead is not forked again: its group comes back as
        ``(_HERE, group)`` for the engine's process to train."""
        busy = self._busy = {} if busy is None else busy  # worker -> (group, start)
        try:
            while True:
                for i in range(len(self._procs)):
                    if i in busy:
                        continue
                    g = pick(i)
                    if g is None:
                        continue
                    if self._procs[i] is None or not self._procs[i].is_alive():
                        self._stop(i, kill=True)
                        if stop:  # this thread may not fork (its workers would die with it): the engine's thread trains the group
                            yield _HERE, g
                            continue
                        self._start(i)
                    got = self._send(i, g, rnd, run_id, grad, groups, busy)
                    if got is not None:
                        yield got, None
                if not busy:
                    return
                limit = None
                if self._timeout > 0:
                    limit = max(0.0, min(t for _, t in busy.values()) + self._timeout - time.monotonic())
                ready = wait([self._conns[i] for i in busy] + [self._procs[i].sentinel for i in busy] + ([stop[1]] if stop else []), timeout=limit)
                if stop and stop[0].is_set():
                    raise _Stopped
                for i in list(busy):
                    g, started = busy[i]
                    jobs = groups[g][0]
                    conn, proc = self._conns[i], self._procs[i]
                    if conn in ready or proc.sentinel in ready:
                        del busy[i]
                        try:
                            header, blobs, states = _unpack(_receive(conn), self._areas[i])
                        except (EOFError, OSError):
                            proc.join(1.0)
                            code = proc.exitcode
                            self._stop(i, kill=True)
                            yield self._lost(jobs, f"worker process {proc.pid} exited (code {code}) while training this client's group"), None
                            continue
                        if header["status"] == "ok":
                            yield _outcomes_in(header, blobs), {cid: (states or {}).get(cid, {}) for cid in jobs}
                        else:
                            yield {cid: ClientOutcome.raised(_failure_in(header["failure"]), time.monotonic() - started) for cid in jobs}, None
                    elif self._timeout > 0 and time.monotonic() - started >= self._timeout:
                        del busy[i]
                        self._stop(i, kill=True)
                        yield self._lost(jobs, f"worker process {proc.pid} took over engine.worker_timeout={self._timeout:g} s for this client's group; stopped"), None
        except _Stopped:
            for i in list(busy):
                self._stop(i, kill=True)
            busy.clear()
        except BaseException:
            for i in list(busy):  # an error or an interrupt here: no worker is left training for nobody
                self._stop(i, kill=True)
            raise

    @staticmethod
    def _lost(jobs: dict[int, bytes], why: str) -> dict[int, ClientOutcome]:
        return {cid: ClientOutcome.raised(ClientFailure("WorkerLost", why)) for cid in jobs}

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.is_alive()]

    def close(self) -> None:
        """Stop every worker: asked to leave, killed if it does not; one still training a group
        (a round that ended in an error or an interrupt) is killed at once."""
        busy, self._busy = self._busy, {}
        for i in range(len(self._procs)):
            self._stop(i, kill=i in busy)
