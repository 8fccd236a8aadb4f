"""How many torch intra-op threads a run uses (``engine.threads``; 0 = decide here).

Measured on a 2-core machine (``benchmarks/perf.py``, "threads" rows): with both
cores idle, two threads train a 1M-26M-parameter model 1.6-1.8x faster than one;
with one core kept busy by another process, two threads are 1.6-5x *slower*
than one, because torch's worker threads wait on the one that shares a busy core.
Tiny models gain at most 1.2x from a second thread and lose 5x when a core is busy.
So the automatic choice is one thread for models under ``SMALL_MODEL`` parameters,
and otherwise one thread per core that nothing else is using when the run starts.
"""

from __future__ import annotations

import math
import multiprocessing
import os

#: Below this many parameters a second thread buys little and costs a lot on a busy machine.
SMALL_MODEL = 100_000


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def busy_cores() -> int:
    """Cores other processes are using now: the larger of the 1-minute load average
    and the instantaneous count of other runnable tasks (the load average lags a
    job that just started)."""
    try:
        fields = open("/proc/loadavg").read().split()
        running_now = int(fields[3].split("/")[0]) - 1  # minus this process
        return max(int(math.floor(float(fields[0]))), running_now)
    except (OSError, ValueError, IndexError):
        try:
            return int(math.floor(os.getloadavg()[0]))
        except (OSError, AttributeError):
            return 0


def choose_threads(configured: int, model_parameters: int) -> int:
    """``configured`` if set; otherwise 1 for small models, else the idle cores (at least 1)."""
    if configured > 0:
        return configured
    if model_parameters < SMALL_MODEL:
        return 1
    return max(1, usable_cores() - busy_cores())


def choose_workers(configured: int, torch_threads: int) -> int:
    """Threads that train a round's batched client groups side by side (``engine.workers``).

    ``configured`` if set; otherwise one per core idle at start when torch runs one intra-op
    thread (small models: each worker then keeps one core busy), and 1 when torch's own threads
    already use the cores (large models), where more workers would only contend for them."""
    if configured > 0:
        return configured
    if torch_threads > 1:
        return 1
    return max(1, usable_cores() - busy_cores())


def choose_parallel(configured: str) -> str:
    """How ``engine.workers`` run side by side (``engine.parallel``): ``threads`` or ``processes``.

    ``auto`` is processes where fork is available (Linux): a batched step of a small model is
    mostly Python and dispatch, which threads of one interpreter take turns at (the GIL), so
    forked processes are what let two cores do twice the work (benchmarks/results/cores.md)."""
    if configured != "auto":
        return configured
    return "processes" if "fork" in multiprocessing.get_all_start_methods() else "threads"
