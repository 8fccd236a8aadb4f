"""Both cores: the population job at cohort 500 with one worker on one core against two workers on two (threads and processes).

    .venv/bin/python benchmarks/cores.py                                   # writes benchmarks/results/cores.md
    .venv/bin/python benchmarks/cores.py --clients 1000 --rounds 10 --pairs 3 --out /tmp/cores.md

The job is ``benchmarks/population.py``'s (FedAvg over its synthetic 64-feature npz, the MLP 64-64-10
from the same initial weights, SGD lr 0.1 without momentum, batch 10, 1 local epoch, ``partition.name
= natural``), with ``engine.cohort = 500``. Each run is a whole ``featherfl run`` process: one worker
pinned to one core (``taskset -c 0``, ``engine.workers = 1``) and two workers on two cores (``taskset -c
0,1``, ``engine.workers = 2``) as threads (``engine.parallel = threads``) and as forked processes
(``engine.parallel = processes``: the engine's process trains one group, one forked worker the other), in rotating order. Reported: medians (and spread) of the in-process
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
from population import ENV, fixed_rows_cmd as featherfl_cmd  # noqa: E402  (the job's data, model and flags: one definition)

COHORT = 500
TIMING = {"seconds", "wall_seconds"}


#: (label, workers, engine.parallel): one worker on core 0, two on cores 0 and 1
VARIANTS = [("1 core, 1 worker", 1, "threads"), ("2 cores, 2 threads", 2, "threads"), ("2 cores, 2 processes", 2, "processes")]


def job(npz: Path, init: Path, clients: int, rounds: int, out: Path, workers: int, parallel: str) -> list[str]:
    cores = "0" if workers == 1 else "0,1"
    cmd = featherfl_cmd(npz, init, clients, out)  # its later flags and --set override the earlier ones
    return ["taskset", "-c", cores, *cmd, "--rounds", str(rounds), "--set", f"eval.every={rounds}", "--set", f"engine.cohort={COHORT}",
            "--set", f"engine.workers={workers}", "--set", f"engine.parallel={parallel}"]


def run_one(cmd: list[str], out: Path, env: dict) -> dict:
    subprocess.run(["rm", "-rf", str(out)], check=True)
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"exit {r.returncode}: {' '.join(cmd[:6])} ...\n{r.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"wall": wall, "per_round": statistics.median(r["seconds"] for r in rows[1:] or rows), "rows": [{k: v for k, v in r.items() if k not in TIMING} for r in rows], "accuracy": rows[-1]["accuracy"]}


def idle_share(seconds: float = 0.5) -> float:
    """The share of all cores' time that was idle over ``seconds`` (/proc/stat): 1.0 on a quiet machine."""
    def sample():
        fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return fields[3] + fields[4], sum(fields[:8])
    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(limit: float, share: float = 0.9) -> float:
    """Wait (at most ``limit`` seconds) until the cores are ``share`` idle; the idle share when done."""
    end = time.monotonic() + limit
    now = idle_share()
    while now < share and time.monotonic() < end:
        now = idle_share()
    return now


def _spin(_=None) -> float:
    t = time.perf_counter()
    s = 0
    for i in range(5_000_000):
        s += i
    return time.perf_counter() - t


def _products(_=None) -> float:
    """The batched step's kind of arithmetic: products of 250 clients' batches of 10 rows with their
    64 x 64 weights and the gradients' products, one thread, as the job's step runs them."""
    import torch

    torch.set_num_threads(1)
    x, w, g = torch.randn(250, 10, 64), torch.randn(250, 64, 64), torch.randn(250, 10, 64)
    t = time.perf_counter()
    for _ in range(150):
        torch.bmm(x, w)
        torch.bmm(x.transpose(1, 2), g)
        torch.bmm(g, w.transpose(1, 2))
    return time.perf_counter() - t


def capacity(work=_spin) -> float:
    """What two cores give two processes now: ``work``'s seconds alone on core 0 over its seconds
    when two copies run at once on cores 0 and 1 (2.0 on an idle machine; less where other work
    holds the second core, or where the two cores share the host's arithmetic units or memory).
    Measured beside the runs: the ceiling of their speedup. ``_spin`` is a pure-Python loop,
    ``_products`` the batched products the job's training is made of."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    os.sched_setaffinity(0, {0})
    with ctx.Pool(1) as pool:  # alone, in a forked process as the pair below: the same start for both
        alone = min(pool.map(work, [0])[0] for _ in range(3))
    os.sched_setaffinity(0, {0, 1})
    with ctx.Pool(2) as pool:
        both = min(max(pool.map(work, [0, 1])) for _ in range(3))
    return 2 * alone / both


CPU_SPLIT = r"""
import json, statistics, sys, tempfile, time
from pathlib import Path
from featherfl.engines import batched, local, processes
from featherfl.experiment import run_experiment
from featherfl.schema import build_config
over, workers = json.loads(sys.argv[1]), int(sys.argv[2])
real_group = batched.run_group
def cpu_group(client, rnd, jobs, *a):  # in the worker: each outcome's seconds become its share of the group's CPU seconds
    t = time.process_time()
    out = real_group(client, rnd, jobs, *a)
    for o in out.values():
        o.seconds = (time.process_time() - t) / len(out)
    return out
batched.run_group = cpu_group
groups, rounds = [], []
real_run = processes.GroupProcesses.run
def run(self, rnd, tasks, run_id, local=None, costs=None):
    own, forked = [], []
    def mine(g):  # a group the engine's process trains: its thread's CPU seconds
        t = time.thread_time()
        out = local(g)
        own.append(time.thread_time() - t)
        return out
    for got, states in real_run(self, rnd, tasks, run_id, local=mine if local else None, costs=costs):
        if states is not None:  # a forked worker's group
            forked.append(sum(o.seconds for o in got.values()))
        yield got, states
    groups.append((sum(own), max(forked) if forked else 0.0))
processes.GroupProcesses.run = run
real_round = local.LocalEngine.run_round
def run_round(self, rnd):
    t = time.process_time()
    s = real_round(self, rnd)
    rounds.append(time.process_time() - t)
    return s
local.LocalEngine.run_round = run_round
run_experiment(build_config(None, [tuple(kv) for kv in over] + [("engine.workers", workers), ("engine.parallel", "processes")]), Path(tempfile.mkdtemp()) / "r")
print(json.dumps({"engine": statistics.median(rounds[1:]), "own": statistics.median([g[0] for g in groups[1:]]) if groups else 0.0,
                  "forked": statistics.median([g[1] for g in groups[1:]]) if groups else 0.0,
                  "estimate": statistics.median([r - g[0] + max(g) for r, g in zip(rounds[1:], groups[1:])]) if groups else statistics.median(rounds[1:])}))
"""


def cpu_split(npz: Path, init: Path, clients: int, rounds: int, env: dict) -> dict:
    """CPU seconds per round (rounds 2 on), which no other work on the machine inflates: one worker
    (the engine's process does everything) against two processes (the engine's process: sampling,
    encoding, its own groups, the pipes, validating replies, aggregating; and the forked worker's
    groups, timed in the worker). With two idle cores a round would take about the engine's CPU less
    its own groups, plus the longer of its own groups and the forked worker's."""
    over = [["algorithm", "fedavg"], ["dataset", "npz"], ["clients", clients], ["rounds", rounds], ["model.name", "population_model:mlp"],
            ["data.dir", str(npz)], ["partition.name", "natural"], ["engine.cohort", COHORT], ["model.init", str(init)], ["fedavg.lr", 0.1],
            ["fedavg.momentum", 0.0], ["fedavg.batch_size", 10], ["fedavg.local_epochs", 1], ["fedavg.weighting", "uniform"],
            ["eval.every", rounds], ["log.plots", False], ["engine.threads", 1]]
    out = {}
    for w in (1, 2):
        r = subprocess.run([sys.executable, "-c", CPU_SPLIT, json.dumps(over), str(w)], cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"cpu split failed:\n{r.stderr[-2000:]}")
        out[w] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def spread(xs: list[float]) -> str:
    return f"{min(xs):.3g}-{max(xs):.3g}" if len(xs) > 1 else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--work", default="/tmp/featherfl-cores")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cores.md"))
    ap.add_argument("--quiet-wait", type=float, default=60.0, help="seconds to wait before each run for the cores to be 90%% idle (other work on a shared machine)")
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
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "population.py"), "--make-fixed", str(npz), str(init), str(a.clients)], check=True, env=env)
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    uptime_start = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    res: dict[str, list[dict]] = {label: [] for label, _, _ in VARIANTS}
    caps, tcaps = [capacity()], [capacity(_products)]
    for i in range(a.pairs):
        order = VARIANTS[i % len(VARIANTS):] + VARIANTS[: i % len(VARIANTS)]
        for label, w, parallel in order:
            out = work / f"run-{w}-{parallel}"
            idle = wait_quiet(a.quiet_wait)
            r = run_one(job(npz, init, a.clients, a.rounds, out, w, parallel), out, env)
            r["idle"] = idle
            res[label].append(r)
            print(f"pass {i} {label}: {r['per_round']:.4f} s/round, wall {r['wall']:.2f} s (cores {idle:.0%} idle before)", flush=True)
        caps.append(capacity())
        tcaps.append(capacity(_products))
        print(f"two-core capacity {caps[-1]:.2f} (Python), {tcaps[-1]:.2f} (batched products)", flush=True)
    split = cpu_split(npz, init, a.clients, a.rounds, env)
    uptime_end = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    load_end = os.getloadavg()
    one = res[VARIANTS[0][0]]
    every = [r for rs in res.values() for r in rs]
    same = all(r["rows"] == one[0]["rows"] for r in every)
    versions = subprocess.run([sys.executable, "-c", "import numpy, torch; print(torch.__version__, numpy.__version__)"], capture_output=True, text=True).stdout.split()
    cmd = f".venv/bin/python benchmarks/cores.py --clients {a.clients} --rounds {a.rounds} --pairs {a.pairs} --quiet-wait {a.quiet_wait:g}"
    lines = [
        "# Both cores: one worker on one core against two workers on two, as threads and as processes",
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
        "(two batched groups of 250 a round). 1 core: `taskset -c 0 ... --set engine.workers=1`; 2 cores: `taskset -c 0,1 ... --set engine.workers=2`",
        f"with `engine.parallel=threads` or `processes`. {a.pairs} passes in rotating order; seconds per round are each run's median over rounds 2-{a.rounds}",
        "(`seconds` in metrics.jsonl); a speedup is the median over passes of (1 core) / (2 cores) from the same pass.",
        "",
        "| | s/round | wall s | speedup s/round | speedup wall |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, _, _ in VARIANTS:
        rs = res[label]
        pr = [x["per_round"] / y["per_round"] for x, y in zip(one, rs)]
        wr = [x["wall"] / y["wall"] for x, y in zip(one, rs)]
        speed = f"**{statistics.median(pr):.2f}** ({spread(pr)}) | **{statistics.median(wr):.2f}** ({spread(wr)})" if rs is not one else "1 | 1"
        lines.append(f"| {label} | {statistics.median(r['per_round'] for r in rs):.4f} ({spread([r['per_round'] for r in rs])}) | "
                     f"{statistics.median(r['wall'] for r in rs):.2f} ({spread([r['wall'] for r in rs])}) | {speed} |")
    lines += [
        "",
        f"Metrics rows (every key but `seconds` / `wall_seconds`) identical across all {len(every)} runs: **{'yes' if same else 'NO'}**; final accuracy {one[0]['accuracy']:.4f}.",
        "",
        f"Load average (1, 5, 15 min) at the start {', '.join(f'{v:.2f}' for v in load_start)}, at the end {', '.join(f'{v:.2f}' for v in load_end)}: on a machine whose",
        "cores other work keeps busy the second core is only partly ours, so the speedup measured here is a floor, not the figure for an idle machine.",
        "The whole-process ratio also carries the start-up (imports, data, first-call set-up), which one core or two do alike.",
        "",
        f"Before each run the benchmark waited (at most {a.quiet_wait:g} s) for both cores to be 90% idle; the idle share just before each run:",
        f"{', '.join(format(r['idle'], '.0%') for r in every)} ({sum(r['idle'] >= 0.9 for r in every)} of {len(every)} runs started on a quiet machine).",
        "",
        f"Two-core capacity (a pure-Python loop alone on core 0 against two copies on cores 0 and 1; 2.00 on an idle machine), measured before",
        f"the first pass and after each: {', '.join(f'{c:.2f}' for c in caps)} (median {statistics.median(caps):.2f}): the ceiling for any speedup above.",
        f"The same for the batched products the training is made of (`torch.bmm` of 250 clients' batches, one thread each): {', '.join(f'{c:.2f}' for c in tcaps)}",
        f"(median {statistics.median(tcaps):.2f}). Two processes' speedup per round is {statistics.median(x['per_round'] / y['per_round'] for x, y in zip(one, res['2 cores, 2 processes'])) / statistics.median(tcaps):.0%} of that median.",
        "",
        "CPU seconds per round (medians over rounds 2 on; CPU time, which other work on the machine does not inflate much). With two",
        "processes the engine's process trains one of the two groups itself and one forked worker the other:",
        "",
        "| | engine's process | its own group | the forked worker's group | estimate for two idle cores |",
        "|---|---:|---:|---:|---:|",
        f"| 1 worker | {split[1]['engine']:.3f} | - | - | {split[1]['engine']:.3f} |",
        f"| 2 processes | {split[2]['engine']:.3f} | {split[2]['own']:.3f} | {split[2]['forked']:.3f} | {split[2]['estimate']:.3f} |",
        "",
        f"The estimate is the engine's CPU less its own group, plus the longer of the two groups (they train side by side): {split[1]['engine']:.3f} / "
        f"{split[2]['estimate']:.3f} = **{split[1]['engine'] / split[2]['estimate']:.2f}x** (from CPU time, not a wall-clock measurement).",
        f"What the engine does besides training ({split[2]['engine'] - split[2]['own']:.3f} s: sampling, encoding, the pipe, validating {COHORT} replies,",
        "aggregating) stays serial whatever the number of cores.",
    ]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")
    if not same:
        raise SystemExit("metrics rows differ between the runs")


if __name__ == "__main__":
    main()
