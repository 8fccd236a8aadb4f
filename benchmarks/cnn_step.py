"""Seconds per round of batched FedAvg on the population benchmark's small CNN, with the conv nets'
hand-stepped local step (featherfl/algorithms/conv_batched.py) and without it (the vmap step).

The job: 1000 MNIST writers (natural partition), cohort 50, 30 rounds, batch 10, one local epoch,
one thread, the CNN of ``population_model.py``. Runs alternate (without, with, without, ...), each
in a fresh process pinned to one core; a run's figure is the mean of ``seconds`` over its rounds
in metrics.jsonl, and the table gives every run and the medians. Writes
benchmarks/results/cnn_step.md.

    python benchmarks/cnn_step.py --data /tmp/pp/mnist-writers1000.npz --init /tmp/pp/init-cnn.pt --reps 5 --core 0

(the data and initial weights are the files benchmarks/population.py writes). With ``--pfl-python``
(the interpreter of the environment where population.py installs pfl-research 0.6.0), pfl's
FedAvg on the same job (population.py's pfl script: the time inside ``FederatedAveraging.run``,
divided by the rounds) runs in the same alternation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def job_args(data: str, init: str, out: str, rounds: int) -> list[str]:
    return [
        "run", "--algorithm", "fedavg", "--dataset", "npz", "--clients", "1000", "--rounds", str(rounds),
        "--model", "population_model:cnn", "--out", out, "--quiet",
        "--set", f"data.dir={data}", "--set", "partition.name=natural", "--set", "engine.cohort=50",
        "--set", f"model.init={init}", "--set", f"eval.every={rounds}", "--set", "log.plots=false",
        "--set", "engine.threads=1", "--set", "fedavg.lr=0.05", "--set", "fedavg.momentum=0",
        "--set", "fedavg.batch_size=10", "--set", "fedavg.local_epochs=1", "--set", "fedavg.weighting=uniform",
    ]


def child(mode: str, args: list[str]) -> None:
    """Run the featherfl CLI in this process; ``vmap`` switches the conv lowering off."""
    sys.path[:0] = [str(ROOT), str(HERE)]
    if mode == "vmap":
        from featherfl.algorithms import conv_batched

        conv_batched.plan = lambda *a: None
    from featherfl.algorithms import vectorized

    spent = [0.0]
    real = vectorized.train_clients_stacked

    def timed(*a, **k):  # the batched local training's share of the round
        t = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            spent[0] += time.perf_counter() - t

    vectorized.train_clients_stacked = timed
    from featherfl.cli import main

    sys.argv = ["featherfl"] + args
    try:
        main()
    finally:
        out = Path(args[args.index("--out") + 1])
        (out / "train_seconds.json").write_text(json.dumps(spent[0]))


def one(mode: str, data: str, init: str, rounds: int, core: int | None) -> tuple[float, float, float, float]:
    out = f"/tmp/cnn_step-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--"] + job_args(data, init, out, rounds)
    if core is not None:
        cmd = ["taskset", "-c", str(core)] + cmd
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]), FLWR_TELEMETRY_ENABLED="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    rows = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    secs = [r["seconds"] for r in rows if "seconds" in r]
    train = json.loads(Path(out, "train_seconds.json").read_text()) / len(secs)
    return statistics.mean(secs), wall, rows[-1].get("accuracy", float("nan")), train


def one_pfl(pfl_py: str, data: str, init: str, rounds: int, core: int | None) -> tuple[float, float, float, float]:
    sys.path.insert(0, str(HERE))
    from population import PFL_JOB

    script = Path("/tmp/cnn_step-pfl_job.py")
    script.write_text(PFL_JOB)
    out = Path("/tmp/cnn_step-pfl.json")
    out.unlink(missing_ok=True)
    cmd = [pfl_py, str(script), data, init, str(out), str(HERE), "cnn", str(rounds), "50", "0.05", "10", "0"]
    if core is not None:
        cmd = ["taskset", "-c", str(core)] + cmd
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - t
    r = json.loads(out.read_text())
    return r["seconds"] / rounds, wall, r["accuracy"], float("nan")


def main() -> None:
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        child(sys.argv[i + 1], sys.argv[sys.argv.index("--") + 1 :])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/tmp/pp/mnist-writers1000.npz")
    ap.add_argument("--init", default="/tmp/pp/init-cnn.pt")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--core", type=int, default=0, help="CPU core to pin the runs to (-1: no pinning)")
    ap.add_argument("--out", default=str(HERE / "results" / "cnn_step.md"))
    ap.add_argument("--pfl-python", default="", help="python of an environment with pfl 0.6.0 (empty: no pfl runs)")
    a = ap.parse_args()
    core = None if a.core < 0 else a.core
    load_before = os.getloadavg()
    modes = ["vmap", "lowered"] + (["pfl"] if a.pfl_python else [])
    runs: dict[str, list[tuple[float, float, float, float]]] = {m: [] for m in modes}
    for rep in range(a.reps):
        for mode in modes:
            r = one_pfl(a.pfl_python, a.data, a.init, a.rounds, core) if mode == "pfl" else one(mode, a.data, a.init, a.rounds, core)
            runs[mode].append(r)
            print(f"rep {rep} {mode}: {r[0]:.4f} s/round ({r[3]:.4f} in batched training), wall {r[1]:.2f} s, accuracy {r[2]:.4f}", flush=True)
    load_after = os.getloadavg()
    med = {m: (statistics.median([x[0] for x in v]), statistics.median([x[1] for x in v]), statistics.median([x[3] for x in v])) for m, v in runs.items()}
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        "# Small CNN: hand-stepped batched local step vs the vmap step",
        "",
        "FedAvg, 1000 MNIST writers (natural partition), cohort 50, batch 10, one local epoch, lr 0.05, no momentum,",
        f"{a.rounds} rounds, one thread, the CNN of benchmarks/population_model.py (Conv 1-8 5x5, ReLU, max-pool 2,",
        "Conv 8-16 5x5, ReLU, max-pool 2, Linear 256-10). `vmap`: the conv lowering switched off (every local",
        "step is vmap of functional_call + grad, as before it); `lowered`: featherfl/algorithms/conv_batched.py;",
        "`pfl`: pfl-research 0.6.0's FedAvg on the same data, model and initial weights (population.py's script; its",
        "seconds are the time inside FederatedAveraging.run divided by the rounds; wall: its whole process).",
        "s/round: the mean of `seconds` in metrics.jsonl (the in-process round time); wall: the whole process.",
        "Runs alternate, each in a fresh process" + (f" pinned to core {core}" if core is not None else "") + ".",
        "",
        "```",
        f"python benchmarks/cnn_step.py --data {a.data} --init {a.init} --rounds {a.rounds} --reps {a.reps} --core {a.core}" + (f" --pfl-python {a.pfl_python}" if a.pfl_python else ""),
        "```",
        "",
        f"Machine: {cpu}, {os.cpu_count()} logical CPUs; load average (1, 5, 15 min) {tuple(round(x, 2) for x in load_before)} before,"
        f" {tuple(round(x, 2) for x in load_after)} after (other jobs shared the machine when it is above 0).",
        "",
        "| run | " + " | ".join(f"{m} s/round" for m in modes) + " | " + " | ".join(f"{m} wall s" for m in modes) + " | " + " | ".join(f"{m} accuracy" for m in modes) + " |",
        "|---" * (1 + 3 * len(modes)) + "|",
    ]
    for i in range(a.reps):
        r = [runs[m][i] for m in modes]
        lines.append(f"| {i} | " + " | ".join(f"{x[0]:.4f}" for x in r) + " | " + " | ".join(f"{x[1]:.2f}" for x in r) + " | " + " | ".join(f"{x[2]:.4f}" for x in r) + " |")
    lines += [
        "| median | " + " | ".join(f"{med[m][0]:.4f}" for m in modes) + " | " + " | ".join(f"{med[m][1]:.2f}" for m in modes) + " |" + " |" * len(modes),
        "",
        f"Of the round, featherfl's batched local training (the time inside vectorized.train_clients_stacked), medians: vmap {med['vmap'][2]:.4f} s/round, lowered {med['lowered'][2]:.4f} s/round; the rest of the round (sampling, the engine, the server's aggregation, the evaluation in the last round) is the difference.",
        "",
        f"Medians: lowered / vmap {med['lowered'][0] / med['vmap'][0]:.2f} per round, {med['lowered'][1] / med['vmap'][1]:.2f} wall.",
    ]
    if "pfl" in runs:
        lines.append(f"Medians: lowered / pfl {med['lowered'][0] / med['pfl'][0]:.2f} per round, {med['lowered'][1] / med['pfl'][1]:.2f} wall; vmap / pfl {med['vmap'][0] / med['pfl'][0]:.2f} per round.")
    lines.append("")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
