"""Partitioner speed at population scale: every partitioner on 100,000 clients x 60 rows.

    .venv/bin/python benchmarks/partition_speed.py                    # writes benchmarks/results/partition_speed.md
    .venv/bin/python benchmarks/partition_speed.py --clients 10000 --repeats 5 --out /tmp/p.md

The data are those of ``benchmarks/population.py``: 6,000,000 labels drawn uniformly from 10
classes (``default_rng(0)``), and for ``natural`` a client id per row, each client's 60 rows in
one run. Each timing is one partitioner's call in a fresh process, as a run partitions once:
in one process a partitioner's time depended on the one before it (what the allocator had kept
or handed back; shards took 0.26 s alone and 0.45 s after Dirichlet). The data are made before
the clock starts. The repeats go round the partitioners in turn (so a spell of load from other
work falls on all of them alike) and the table gives each one's median and its fastest. The load average (``os.getloadavg``) is written at the start and
the end: on a shared machine it says how far the seconds are from an idle one's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featherfl.data import partition as P  # noqa: E402

GOAL_S = 1.0


def jobs(clients: int, rows: int, classes: int = 10):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, clients * rows)
    groups = np.repeat(rng.permutation(clients), rows)
    return [
        ("natural", lambda: P.natural(groups, clients)),
        ("iid", lambda: P.iid(labels, clients, 0)),
        ("dirichlet(0.5), min 10", lambda: P.dirichlet(labels, clients, 0.5, 0, 10)),
        ("shards (2 per client)", lambda: P.shards(labels, clients, 2, 0)),
        ("quantity-skew(0.5), min 10", lambda: P.quantity_skew(labels, clients, 0.5, 0, 10)),
        ("power-law(1.5), min 10", lambda: P.power_law(labels, clients, 1.5, 0, 10)),
        ("label-deficient (T=3, R=5)", lambda: P.label_deficient(labels, clients, 0, 0, 3, 5)),
    ]


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100_000)
    ap.add_argument("--rows", type=int, default=60, help="rows per client")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "partition_speed.md"))
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child: time the i-th partitioner once, print the seconds
    a = ap.parse_args(argv)
    if a.one is not None:
        fn = jobs(a.clients, a.rows)[a.one][1]
        t = time.perf_counter()
        fn()
        print(time.perf_counter() - t)
        return 0
    command = "python " + " ".join(["benchmarks/partition_speed.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"command: {command}", flush=True)
    start_load, t0 = load(), time.perf_counter()
    todo = jobs(a.clients, a.rows)
    times: dict[str, list[float]] = {name: [] for name, _ in todo}
    for r in range(a.repeats):
        for i, (name, _) in enumerate(todo):
            out = subprocess.run([sys.executable, __file__, "--one", str(i), "--clients", str(a.clients), "--rows", str(a.rows)], capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{name} failed (exit {out.returncode}): {out.stderr.strip()[-500:]}")
            times[name].append(float(out.stdout.strip().splitlines()[-1]))
            print(f"  repeat {r + 1}: {name}: {times[name][-1]:.3f} s", file=sys.stderr, flush=True)
    end_load = load()
    n = a.clients * a.rows
    lines = [
        "# Partitioner speed at population scale",
        "",
        f"Written by `benchmarks/partition_speed.py` in {time.perf_counter() - t0:.0f} s. Command: `{command}`",
        "",
        f"{a.clients:,} clients x {a.rows} rows ({n:,} labels, 10 classes, `default_rng(0)`; `natural`: each client's rows in one run),",
        f"each timing one call in a fresh process, {a.repeats} repeats taken in turn; median and fastest, in seconds. Goal: at most {GOAL_S:g} s each.",
        "",
        f"Load average (1, 5, 15 min) on {os.cpu_count()} cores: {start_load} at the start, {end_load} at the end. This machine is",
        "shared with other work: above a load of about one per core every second here is longer than an idle machine's.",
        "",
        f"Versions: Python {platform.python_version()}, numpy {np.__version__}.",
        "",
        "| partitioner | median s | fastest s |",
        "|---|---:|---:|",
    ]
    for name, ts in times.items():
        lines.append(f"| {name} | {statistics.median(ts):.2f} | {min(ts):.2f} |")
    lines += [
        "",
        "How: one permutation or one stable grouping per partitioner, integer keys grouped by 16-bit counting sorts",
        "(`_stable_order`), per-client sorts as row sorts of padded blocks (`_sort_runs`; runs of one length, as shards', with no padding), label-deficient's",
        "per-client target draws read from the generator's stream in one block (`_target_labels`), and Dirichlet's",
        "repair ordering only the donors drawn from. Dirichlet from 10,000 clients ends its tries at the first",
        "hopeless draw (its docstring says why): its 20 tries' random draws alone took about 2 s here.",
        "",
    ]
    table = "\n".join(lines)
    print(table)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
