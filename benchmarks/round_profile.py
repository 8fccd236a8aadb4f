"""Where a round of the population job's time goes, and one commit against another.

    .venv/bin/python benchmarks/round_profile.py phases             # this checkout, phase by phase
    .venv/bin/python benchmarks/round_profile.py ab A B --pairs 5   # two commits, alternating processes

The job is ``benchmarks/population.py``'s at 1,000 clients (FedAvg, 60 rows of a 64-feature
10-class npz per client, ``partition.name=natural``, ``engine.cohort=50``, 30 rounds, the MLP
64-64-10 plug-in, SGD lr 0.1 without momentum, batch 10, 1 local epoch, one torch thread), run
by the same command line (``population.featherfl_cmd``), pinned to one core (``taskset -c``).

``phases`` runs it in this process (the featherfl first on ``PYTHONPATH``) with wall-clock spans around the parts of a round (the
functions are wrapped, nothing is sampled) and prints milliseconds per round for each, next to
the rounds' own ``seconds`` from ``metrics.jsonl`` (the figure population.md reports as
"fl s/round": the round, the evaluation on rounds that evaluate and the metrics row, without
the checkpoint).

``ab`` exports each commit with ``git archive`` into a temporary folder and runs the whole job
as a separate process per commit, alternating the order pair by pair, and prints each run's
mean ``seconds`` per round and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from population import ENV, fixed_rows_cmd as featherfl_cmd, make_init, make_npz  # noqa: E402

CLIENTS = 1000


def data(work: Path) -> tuple[Path, Path]:
    npz, init = work / f"pop{CLIENTS}.npz", work / "init.pt"
    if not npz.exists() or not init.exists():
        make_npz(npz, CLIENTS)
        make_init(init)
    return npz, init


def run_args(work: Path, out: Path) -> list[str]:
    npz, init = data(work)
    cmd = featherfl_cmd(npz, init, CLIENTS, out)
    return cmd[cmd.index("run") :]


def seconds_per_round(out: Path) -> list[float]:
    return [json.loads(line)["seconds"] for line in (out / "metrics.jsonl").read_text().splitlines()]


# --- phases -----------------------------------------------------------------------------------------


def phases(work: Path) -> None:
    import featherfl.algorithms.fedavg as fedavg
    import featherfl.algorithms.vectorized as vectorized
    import featherfl.engines.base as base
    import featherfl.engines.sampling as sampling
    import featherfl.experiment as experiment
    import featherfl.wire as wire
    from featherfl.cli import main

    spent: dict[str, float] = defaultdict(float)

    def wrap(owner, name: str, label: str) -> None:
        fn = getattr(owner, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[label] += time.perf_counter() - t

        setattr(owner, name, timed)

    wrap(sampling.CohortSampler, "__call__", "sampling the cohort")
    wrap(fedavg.GlobalModelServer, "configure", "configure (global weights, flat)")
    wrap(wire, "encode", "encode (1 downlink + 50 replies)")
    wrap(wire, "decode", "decode + validate (1 downlink + 50 replies)")
    wrap(fedavg.WeightsClient, "update_many", "update_many")
    # (older checkouts train through train_clients only: the same phase)
    wrap(vectorized, "train_clients_stacked" if hasattr(vectorized, "train_clients_stacked") else "train_clients", "local training (50 clients, batched)")
    wrap(fedavg.FedAvg, "aggregate", "aggregate (weighted mean, load)")
    wrap(experiment.Experiment, "_evaluate", "evaluation (10,000 rows, last round only)")
    wrap(base.Engine, "run_round", "run_round")
    out = Path(tempfile.mkdtemp(prefix="round-profile-"))
    try:
        main(run_args(work, out / "run"))
    except SystemExit:
        pass
    secs = seconds_per_round(out / "run")
    subprocess.run(["rm", "-rf", str(out)])
    n = len(secs)
    per = {k: v / n * 1000 for k, v in spent.items()}
    per["update_many besides training (generators, start tensors, reply rows)"] = per.pop("update_many") - per["local training (50 clients, batched)"]
    listed = [k for k in per if k != "run_round"]
    inside = sum(per[k] for k in listed if k != "evaluation (10,000 rows, last round only)")
    per["rest of run_round (engine bookkeeping, ledger, client data)"] = per["run_round"] - inside
    per["outside run_round (metrics row)"] = sum(secs) / n * 1000 - per.pop("run_round") - per["evaluation (10,000 rows, last round only)"]
    total = sum(secs) / n * 1000
    print(f"rounds: {n}; seconds per round from metrics.jsonl: mean {total:.2f} ms, median {statistics.median(secs) * 1000:.2f} ms, round 1 {secs[0] * 1000:.1f} ms")
    print("| phase | ms per round | share |")
    print("|---|---:|---:|")
    for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {v:.2f} | {v / total:.0%} |")


# --- one commit against another ---------------------------------------------------------------------


def ab(commits: list[str], pairs: int, core: str, work: Path) -> None:
    trees = {}
    for c in commits:
        d = Path(tempfile.mkdtemp(prefix=f"round-ab-{c[:8]}-"))
        subprocess.run(f"git -C {ROOT} archive {c} | tar -x -C {d}", shell=True, check=True)
        trees[c] = d
    data(work)
    runs: dict[str, list[float]] = {c: [] for c in commits}
    try:
        for i in range(pairs):
            for c in commits if i % 2 == 0 else commits[::-1]:
                out = work / f"ab-{c[:8]}"
                subprocess.run(["rm", "-rf", str(out)])
                env = {**os.environ, **ENV, "PYTHONPATH": f"{trees[c]}{os.pathsep}{trees[c] / 'benchmarks'}"}
                cmd = ["taskset", "-c", core, sys.executable, "-m", "featherfl", *run_args(work, out)]
                subprocess.run(cmd, cwd=trees[c], env=env, check=True, stdout=subprocess.DEVNULL)
                secs = seconds_per_round(out)
                runs[c].append(sum(secs) / len(secs))
                print(f"pair {i} {c[:8]}: {runs[c][-1] * 1000:.2f} ms per round (median round {statistics.median(secs) * 1000:.2f} ms)", flush=True)
    finally:
        for d in trees.values():
            subprocess.run(["rm", "-rf", str(d)])
    a, b = (statistics.median(runs[c]) for c in commits)
    ratios = [y / x for x, y in zip(runs[commits[0]], runs[commits[1]])]
    print(f"median of per-run means: {commits[0][:8]} {a * 1000:.2f} ms, {commits[1][:8]} {b * 1000:.2f} ms, ratio {b / a:.2f}; "
          f"per-pair ratios {', '.join(f'{r:.2f}' for r in ratios)} (median {statistics.median(ratios):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("phases")
    p = sub.add_parser("ab")
    p.add_argument("commits", nargs=2)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--core", default="0")
    ap.add_argument("--work", default="/tmp/featherfl-population")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.what == "phases":
        os.environ.update(ENV)  # one torch thread, as the job's own process has
        phases(work)
    else:
        ab(a.commits, a.pairs, a.core, work)


if __name__ == "__main__":
    main()
