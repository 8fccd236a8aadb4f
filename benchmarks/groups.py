"""Size-aware batched groups: a power-law population, batched (``engine.vectorize=auto``) against one by one (``off``).

    .venv/bin/python benchmarks/groups.py                                    # writes benchmarks/results/groups.md
    .venv/bin/python benchmarks/groups.py --src before=/tmp/old-featherfl --src after=. --rounds 6 --pairs 2 --out /tmp/groups.md

The job: FedAvg over a synthetic 64-feature, 10-class npz of 1,000 clients whose rows follow
featherfl's ``partition.name=power-law`` sizes (Pareto tail index 1.5, at least 10 rows, 60 rows per
client on average: most clients hold 30-40 rows, a few thousands) with labels skewed per client (a
Dirichlet(1) mix each), the MLP 64-64-10 from ``benchmarks/population_model.py`` from fixed initial
weights, SGD lr 0.1 without momentum, batch 10, 1 local epoch, ``engine.cohort=500``, one core
(``taskset -c 0``, ``engine.threads=1``, ``engine.workers=1``).

A batched call of a model it masks (a CNN) computes every client for its longest client's steps, so
with these sizes one group of 250 makes every client pay for a ~100-200-step client, and
``featherfl.engines.batched.plan_groups`` sorts the cohort by steps and cuts it by a cost model; a
plain MLP's batched steps compute only the clients still training (``vectorized.computes_only_active``),
so its cohort keeps the client-order groups. Each ``--src`` is a featherfl source tree (a
label and a folder: e.g. an export of an older commit, to measure before and after); every tree runs
both ``auto`` and ``off``, in alternating order, ``--pairs`` times. Reported: medians (and spread) of
the in-process seconds per round (``seconds`` in ``metrics.jsonl``, the first round left out) and of
the whole-process wall time, and whether the rows of ``auto`` and ``off`` agree within float rounding
(accuracy within 0.01, loss within 1e-3: the tolerance the tests hold batched training to).
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
ROWS, FEATURES, CLASSES, TEST_ROWS = 60, 64, 10, 10_000
POWER, MIN_ROWS = 1.5, 10
COHORT, LR, BATCH = 500, 0.1, 10
ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
TIMING = {"seconds", "wall_seconds"}


def make_npz(path: Path, clients: int, seed: int = 0) -> None:
    """Gaussian class clusters; a client's rows are contiguous, their number follows featherfl's
    power-law partitioner and their labels a Dirichlet(1) mix per client."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from featherfl.data.partition import power_law

    sizes = np.array([len(p) for p in power_law(np.zeros(clients * ROWS, dtype=np.int64), clients, POWER, seed, MIN_ROWS)])
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, (CLASSES, FEATURES)).astype(np.float32)
    cum = np.cumsum(rng.dirichlet(np.ones(CLASSES), size=clients), axis=1)
    owner = np.repeat(np.arange(clients, dtype=np.int64), sizes)
    y = (rng.random((len(owner), 1)) > cum[owner]).sum(axis=1).clip(0, CLASSES - 1)
    x = (centers[y] + rng.normal(0.0, 3.2, (len(owner), FEATURES))).astype(np.float32)
    ty = rng.integers(0, CLASSES, TEST_ROWS)
    tx = (centers[ty] + rng.normal(0.0, 3.2, (TEST_ROWS, FEATURES))).astype(np.float32)
    np.savez(path, x_train=x, y_train=y.astype(np.int64), x_test=tx, y_test=ty.astype(np.int64), client_train=owner)


def make_init(path: Path) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from population_model import mlp

    torch.manual_seed(0)
    torch.save(mlp((FEATURES,), CLASSES).state_dict(), path)


def command(npz: Path, init: Path, clients: int, rounds: int, out: Path, vectorize: str) -> list[str]:
    return [
        "taskset", "-c", "0", sys.executable, "-m", "featherfl", "run", "--algorithm", "fedavg", "--dataset", "npz", "--clients", str(clients),
        "--rounds", str(rounds), "--model", "population_model:mlp", "--out", str(out), "--quiet",
        "--set", f"data.dir={npz}", "--set", "partition.name=natural", "--set", f"engine.cohort={COHORT}", "--set", f"model.init={init}",
        "--set", f"fedavg.lr={LR}", "--set", "fedavg.momentum=0", "--set", f"fedavg.batch_size={BATCH}", "--set", "fedavg.local_epochs=1",
        "--set", "fedavg.weighting=uniform", "--set", f"eval.every={rounds}", "--set", "log.plots=false", "--set", "engine.threads=1",
        "--set", "engine.workers=1", "--set", f"engine.vectorize={vectorize}",
    ]


def run_one(cmd: list[str], src: Path, out: Path) -> dict:
    subprocess.run(["rm", "-rf", str(out)], check=True)
    env = {**os.environ, **ENV, "PYTHONPATH": f"{src}{os.pathsep}{ROOT / 'benchmarks'}"}
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"exit {r.returncode}: {' '.join(cmd[:8])} ...\n{r.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"wall": wall, "per_round": statistics.median(r["seconds"] for r in rows[1:] or rows), "rows": [{k: v for k, v in r.items() if k not in TIMING} for r in rows]}


def close(a: list[dict], b: list[dict]) -> bool:
    """Rows equal within the tests' tolerance for batched against one-by-one training."""
    for x, y in zip(a, b):
        if x.get("bytes_up") != y.get("bytes_up") or x.get("clients_ok") != y.get("clients_ok"):
            return False
        if (x.get("accuracy") is None) != (y.get("accuracy") is None):
            return False
        if x.get("accuracy") is not None and (abs(x["accuracy"] - y["accuracy"]) >= 0.01 or abs(x["loss"] - y["loss"]) >= 1e-3):
            return False
    return len(a) == len(b)


def spread(xs: list[float]) -> str:
    return f"{min(xs):.3g}-{max(xs):.3g}" if len(xs) > 1 else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--src", action="append", default=[], help="label=folder of a featherfl source tree (repeatable; default: this tree as 'now')")
    ap.add_argument("--work", default="/tmp/featherfl-groups")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "groups.md"))
    a = ap.parse_args()
    srcs = [(s.split("=", 1)[0], Path(s.split("=", 1)[1]).resolve()) for s in a.src] or [("now", ROOT)]
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    npz, init = work / f"power{a.clients}.npz", work / "init.pt"
    if not npz.exists():
        make_npz(npz, a.clients)
    if not init.exists():
        make_init(init)
    t0 = time.perf_counter()
    uptime_start = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    res: dict[tuple[str, str], list[dict]] = {(label, v): [] for label, _ in srcs for v in ("auto", "off")}
    for i in range(a.pairs):
        for label, src in srcs if i % 2 == 0 else srcs[::-1]:
            for v in ("auto", "off") if i % 2 == 0 else ("off", "auto"):
                out = work / f"run-{label}-{v}"
                r = run_one(command(npz, init, a.clients, a.rounds, out, v), src, out)
                res[(label, v)].append(r)
                print(f"pass {i} {label} {v}: {r['per_round']:.3f} s/round, wall {r['wall']:.1f} s", flush=True)
    uptime_end = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    versions = subprocess.run([sys.executable, "-c", "import numpy, torch; print(torch.__version__, numpy.__version__)"], capture_output=True, text=True).stdout.split()
    srcs_arg = " ".join(f"--src {label}={src}" for label, src in srcs) if a.src else ""
    cmd = f".venv/bin/python benchmarks/groups.py --clients {a.clients} --rounds {a.rounds} --pairs {a.pairs} {srcs_arg}".strip()
    lines = [
        "# Size-aware batched groups: a power-law population, batched against one by one",
        "",
        f"Written by `benchmarks/groups.py` in {time.perf_counter() - t0:.0f} s. Command: `{cmd}`",
        "",
        f"Versions: Python {platform.python_version()}, torch {versions[0]}, numpy {versions[1]}; {os.cpu_count()} CPUs, each run on core 0.",
        "",
        f"Load at the start: `{uptime_start}`",
        "",
        f"Load at the end: `{uptime_end}`",
        "",
        f"Job: FedAvg, {a.clients:,} clients of power-law sizes (tail index {POWER}, at least {MIN_ROWS} rows, {ROWS} on average), MLP 64-64-10,",
        f"SGD lr {LR}, batch {BATCH}, 1 local epoch, `engine.cohort={COHORT}`, {a.rounds} rounds, `engine.threads=1`, `engine.workers=1`.",
        f"{a.pairs} alternating passes; seconds per round are each run's median over rounds 2-{a.rounds}.",
        "",
        "| source | engine.vectorize | s/round | wall s | rows of auto within tolerance of off |",
        "|---|---|---:|---:|---|",
    ]
    for label, _ in srcs:
        ok = all(close(x["rows"], y["rows"]) for x in res[(label, "auto")] for y in res[(label, "off")][:1])
        for v in ("auto", "off"):
            rs = res[(label, v)]
            lines.append(f"| {label} | {v} | {statistics.median(r['per_round'] for r in rs):.3f} ({spread([r['per_round'] for r in rs])}) | "
                         f"{statistics.median(r['wall'] for r in rs):.1f} ({spread([r['wall'] for r in rs])}) | {('yes' if ok else 'NO') if v == 'auto' else ''} |")
    lines.append("")
    for label, _ in srcs:
        auto = statistics.median(r["per_round"] for r in res[(label, "auto")])
        off = statistics.median(r["per_round"] for r in res[(label, "off")])
        lines.append(f"- {label}: batched takes {auto / off:.2f}x the one-by-one seconds per round.")
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
