"""Both cores: the population job at cohort 500 with one worker on one core against two workers on two.

    .venv/bin/python benchmarks/cores.py                                   # writes benchmarks/results/cores.md
    .venv/bin/python benchmarks/cores.py --clients 1000 --rounds 10 --pairs 3 --out /tmp/cores.md

The job is ``benchmarks/population.py``'s (FedAvg over its synthetic 64-feature npz, the MLP 64-64-10
from the same initial weights, SGD lr 0.1 without momentum, batch 10, 1 local epoch, ``partition.name
= natural``), with ``engine.cohort = 500``. Each run is a whole ``featherfl run`` process: one worker
pinned to one core (``taskset -c 0``, ``engine.workers = 1``) and two workers on two cores (``taskset -c
0,1``, ``engine.workers = 2``), in alternating pairs. Reported: medians (and spread) of the in-process
seconds per round (each round's ``seconds`` in ``metrics.jsonl``, the first round left out: it pays for
first-call set-up) and of the whole-process wall time, their ratios, and whether every run's metrics rows
(timings left out) are identical. Both use ``engine.threads = 1`` and the default ``engine.group_clients``
(256): a cohort of 500 is two batched groups of 250, whoever trains them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from population import ENV, featherfl_cmd  # noqa: E402  (the job's data, model and flags: one definition)

COHORT = 500
TIMING = {"seconds", "wall_seconds"}


def job(npz: Path, init: Path, clients: int, rounds: int, out: Path, workers: int) -> list[str]:
    cores = "0" if workers == 1 else "0,1"
    cmd = featherfl_cmd(npz, init, clients, out)  # its later flags and --set override the earlier ones
    return ["taskset", "-c", cores, *cmd, "--rounds", str(rounds), "--set", f"eval.every={rounds}", "--set", f"engine.cohort={COHORT}", "--set", f"engine.workers={workers}"]


def run_one(cmd: list[str], out: Path, env: dict) -> dict:
    subprocess.run(["rm", "-rf", str(out)], check=True)
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"exit {r.returncode}: {' '.join(cmd[:6])} ...\n{r.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"wall": wall, "per_round": statistics.median(r["seconds"] for r in rows[1:] or rows), "rows": [{k: v for k, v in r.items() if k not in TIMING} for r in rows], "accuracy": rows[-1]["accuracy"]}


def spread(xs: list[float]) -> str:
    return f"{min(xs):.3g}-{max(xs):.3g}" if len(xs) > 1 else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--work", default="/tmp/featherfl-cores")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cores.md"))
    a = ap.parse_args()
    if a.clients < COHORT:
        raise SystemExit(f"--clients must be at least the cohort ({COHORT})")
    if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
        raise SystemExit("needs cores 0 and 1 (taskset -c 0 and -c 0,1)")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    npz, init = work / f"pop{a.clients}.npz", work / "init.pt"
    env = {**os.environ, **ENV, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}"}
    if not npz.exists() or not init.exists():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "population.py"), "--make", str(npz), str(init), str(a.clients)], check=True, env=env)
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    uptime_start = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    res: dict[int, list[dict]] = {1: [], 2: []}
    for i in range(a.pairs):
        for w in (1, 2) if i % 2 == 0 else (2, 1):
            r = run_one(job(npz, init, a.clients, a.rounds, work / f"run-{w}", w), work / f"run-{w}", env)
            res[w].append(r)
            print(f"pair {i} workers {w}: {r['per_round']:.4f} s/round, wall {r['wall']:.2f} s", flush=True)
    uptime_end = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    load_end = os.getloadavg()
    one, two = res[1], res[2]
    same = all(r["rows"] == one[0]["rows"] for r in one + two)
    pr = [x["per_round"] / y["per_round"] for x, y in zip(one, two)]
    wr = [x["wall"] / y["wall"] for x, y in zip(one, two)]
    versions = subprocess.run([sys.executable, "-c", "import numpy, torch; print(torch.__version__, numpy.__version__)"], capture_output=True, text=True).stdout.split()
    cmd = f".venv/bin/python benchmarks/cores.py --clients {a.clients} --rounds {a.rounds} --pairs {a.pairs}"
    lines = [
        "# Both cores: one worker on one core against two workers on two",
        "",
        f"Written by `benchmarks/cores.py` in {time.perf_counter() - t0:.0f} s. Command: `{cmd}`",
        "",
        f"Versions: Python {platform.python_version()}, torch {versions[0]}, numpy {versions[1]}; {os.cpu_count()} CPUs.",
        "",
        f"Load at the start: `{uptime_start}`",
        "",
        f"Load at the end: `{uptime_end}`",
        "",
        f"Job: FedAvg over `benchmarks/population.py`'s synthetic npz ({a.clients:,} clients x 60 rows, `partition.name=natural`), MLP 64-64-10,",
        f"SGD lr 0.1, batch 10, 1 local epoch, `engine.cohort={COHORT}`, {a.rounds} rounds, `engine.threads=1`, `engine.group_clients=256`",
        "(two batched groups of 250 a round). 1 core: `taskset -c 0 ... --set engine.workers=1`; 2 cores: `taskset -c 0,1 ... --set engine.workers=2`.",
        f"{a.pairs} alternating pairs; seconds per round are each run's median over rounds 2-{a.rounds} (`seconds` in metrics.jsonl).",
        "",
        "| | 1 core, 1 worker | 2 cores, 2 workers | speedup (median of pair ratios) |",
        "|---|---:|---:|---:|",
        f"| in-process s/round | {statistics.median(r['per_round'] for r in one):.4f} ({spread([r['per_round'] for r in one])}) | {statistics.median(r['per_round'] for r in two):.4f} ({spread([r['per_round'] for r in two])}) | **{statistics.median(pr):.2f}** ({spread(pr)}) |",
        f"| whole-process wall s | {statistics.median(r['wall'] for r in one):.2f} ({spread([r['wall'] for r in one])}) | {statistics.median(r['wall'] for r in two):.2f} ({spread([r['wall'] for r in two])}) | **{statistics.median(wr):.2f}** ({spread(wr)}) |",
        "",
        f"Metrics rows (every key but `seconds` / `wall_seconds`) identical across all {2 * a.pairs} runs: **{'yes' if same else 'NO'}**; final accuracy {one[0]['accuracy']:.4f}.",
        "",
        f"Load average (1, 5, 15 min) at the start {', '.join(f'{v:.2f}' for v in load_start)}, at the end {', '.join(f'{v:.2f}' for v in load_end)}: on a machine whose",
        "cores other work keeps busy the second core is only partly ours, so the speedup measured here is a floor, not the figure for an idle machine.",
        "The whole-process ratio also carries the start-up (imports, data, first-call set-up), which one core or two do alike.",
    ]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")
    if not same:
        raise SystemExit("metrics rows differ between 1 and 2 workers")


if __name__ == "__main__":
    main()
