"""Speed benchmark: featherfl against a hand-written loop, thread defaults, partitioning at scale.

Every row is a ratio of two jobs measured side by side in this one process run, in
turn, repeated, median taken (this 2-core machine is shared: read the ratios).

1. FedAvg on digits, 10 IID clients, 10 rounds, 1 local epoch (batch 32, SGD 0.05,
   momentum 0.9, MLP), whole job including evaluation: featherfl's local engine with
   ``engine.vectorize = off`` and ``auto``, against a plain PyTorch loop doing the same
   work (same model, data, partition and hyperparameters; no codec, ledger or checkpoints).
2. ``engine.threads``: the same FedAvg job with torch's default threads vs the automatic
   choice, while another process keeps one core busy (the situation of a shared machine).
3. Dirichlet(0.5) partition of 10^4 and 10^5 clients (20 samples each on average).
4. FD on digits, 10 Dirichlet(0.5) devices, 3 global iterations of the default local steps:
   ``engine.vectorize = off`` against ``auto`` (the devices' local steps batched).
5. ``faug.enabled = true`` with FD, digits, 2 rounds, 1,000 GAN steps, while another process
   keeps one core busy: the default ``engine.threads`` against ``engine.threads = 1``.
6. One BAFFLE client estimate (K = 100 forward differences, seeded in-place perturbations)
   against K + 1 plain inference forwards of the same batch (``benchmarks/baffle_step_cost.py``).

    .venv/bin/python benchmarks/perf.py                    # writes benchmarks/results/perf.md
    .venv/bin/python benchmarks/perf.py --repeats 1 --out /tmp/perf.md
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from featherfl.schema import build_config  # noqa: E402
from featherfl.experiment import prepare, run_experiment  # noqa: E402

JOB = [("algorithm", "fedavg"), ("clients", 10), ("rounds", 10), ("partition.name", "iid"), ("fedavg.local_epochs", 1)]


def featherfl_job(work: Path, vectorize: str, threads: int = 1, plots: bool = True) -> float:
    cfg = build_config(overrides=JOB + [("engine.vectorize", vectorize), ("engine.threads", threads), ("log.plots", plots)])
    t = time.perf_counter()
    run_experiment(cfg, work / f"ff-{vectorize}-{threads}-{time.time_ns()}")
    return time.perf_counter() - t


def hand_written_job() -> float:
    """The same work written the plain way: load and partition the data, a model per client, SGD,
    averaging, evaluation each round. Data loading and partitioning are featherfl's own (``prepare``),
    timed as in the featherfl job."""
    torch.set_num_threads(1)
    t = time.perf_counter()
    p = prepare(build_config(overrides=JOB + [("engine.threads", 1)]))
    global_model = p.ctx.build_model()
    for rnd in range(10):
        states, sizes = [], []
        for c in p.client_data:
            m = copy.deepcopy(global_model)
            opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
            g = torch.Generator().manual_seed(rnd * 100 + c.cid)
            for idx in torch.randperm(len(c.y), generator=g).split(32):
                opt.zero_grad()
                F.cross_entropy(m(c.x[idx]), c.y[idx]).backward()
                opt.step()
            states.append(m.state_dict())
            sizes.append(len(c.y))
        w = torch.tensor(sizes, dtype=torch.float32) / sum(sizes)
        global_model.load_state_dict({k: sum(wi * s[k] for wi, s in zip(w, states)) for k in states[0]})
        with torch.no_grad():
            (global_model(p.dataset.test_x).argmax(1) == p.dataset.test_y).float().mean()
    return time.perf_counter() - t


def _spin(stop):
    while not stop.is_set():
        pass


@contextlib.contextmanager
def busy_core():
    """Another process spinning on one core for the duration (the situation of a shared machine)."""
    stop = mp.Event()
    hog = mp.Process(target=_spin, args=(stop,), daemon=True)
    hog.start()
    time.sleep(2.0)
    try:
        yield
    finally:
        stop.set()
        hog.join(5)


def threads_rows(work: Path, repeats: int) -> dict:
    """Default torch threads vs the automatic choice while one core is kept busy by another process."""
    with busy_core():
        default = _torch_default_threads()
        out = {"default": [], "auto": []}
        for _ in range(repeats):
            out["default"].append(_subprocess_job(work, default, "off"))
            out["auto"].append(_subprocess_job(work, 0, "off"))
    return {k: statistics.median(v) for k, v in out.items()} | {"default_threads": default}


def _torch_default_threads() -> int:
    """What torch picks in a fresh process with no thread variables set."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    r = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True, text=True, env=env, check=True)
    return int(r.stdout.strip())


def _subprocess_job(work: Path, threads: int | None, vectorize: str, job: list | None = None) -> float:
    """One job (default: the FedAvg job) in a fresh process (torch's thread pool is per process);
    ``threads`` None keeps featherfl's default ``engine.threads``."""
    over = list(job or JOB) + ([] if threads is None else [("engine.threads", threads)]) + [("engine.vectorize", vectorize)]
    code = (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from featherfl.schema import build_config\nfrom featherfl.experiment import run_experiment\n"
        "cfg = build_config(overrides=%r)\n"
        "t = time.perf_counter(); run_experiment(cfg, %r); print(time.perf_counter() - t)\n"
    ) % (str(ROOT), over, str(work / f"thr-{threads}-{time.time_ns()}"))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(r.stdout.strip().splitlines()[-1])


FD_JOB = [("algorithm", "fd"), ("clients", 10), ("rounds", 3), ("partition.name", "dirichlet")]


def fd_job(work: Path, vectorize: str) -> float:
    cfg = build_config(overrides=FD_JOB + [("engine.vectorize", vectorize), ("engine.threads", 1), ("log.plots", False)])
    t = time.perf_counter()
    run_experiment(cfg, work / f"fd-{vectorize}-{time.time_ns()}")
    return time.perf_counter() - t


#: The GAN budget is fixed (1,000 steps, no early stop) so that both sides do the same work; this row
#: measures thread oversubscription, not how long the GAN takes to reach faug.stop_recognition.
FAUG_JOB = [("algorithm", "fd"), ("faug.enabled", True), ("rounds", 2), ("faug.gan_steps", 1000), ("faug.check_every", 0)]


def faug_rows(work: Path, repeats: int) -> dict:
    """FAug (FD) with the default engine.threads against engine.threads=1, one core kept busy."""
    with busy_core():
        out = {"default": [], "one": []}
        for _ in range(repeats):
            out["default"].append(_subprocess_job(work, None, "auto", FAUG_JOB))
            out["one"].append(_subprocess_job(work, 1, "auto", FAUG_JOB))
    return {k: statistics.median(v) for k, v in out.items()}


def baffle_step_rows(repeats: int) -> list[dict]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from baffle_step_cost import measure

    return [measure("lenet-baffle", 100, 32, repeats, norm="none"), measure("lenet", 100, 64, repeats)]


def partition_rows() -> dict:
    from featherfl.data.partition import dirichlet

    out = {}
    for n in (10_000, 100_000):
        labels = np.random.default_rng(0).integers(0, 10, size=20 * n)
        t = time.perf_counter()
        parts = dirichlet(labels, n, 0.5, 0, min_samples=10)
        out[n] = (time.perf_counter() - t, min(len(p) for p in parts))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "perf.md"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        featherfl_job(work, "auto")  # warm caches, imports and torch's first-call costs once for every variant
        featherfl_job(work, "off")
        hand_written_job()
        times = {"hand": [], "off": [], "auto": [], "auto-noplots": []}
        for _ in range(a.repeats):  # in turn, so load changes hit every variant alike
            times["hand"].append(hand_written_job())
            times["off"].append(featherfl_job(work, "off"))
            times["auto"].append(featherfl_job(work, "auto"))
            times["auto-noplots"].append(featherfl_job(work, "auto", plots=False))
        med = {k: statistics.median(v) for k, v in times.items()}
        print("fedavg", {k: [round(x, 2) for x in v] for k, v in times.items()}, flush=True)
        thr = threads_rows(work, max(1, a.repeats // 2))
        print("threads", thr, flush=True)
        fd_job(work, "auto")
        fd_times = {"off": [], "auto": []}
        for _ in range(a.repeats):
            fd_times["off"].append(fd_job(work, "off"))
            fd_times["auto"].append(fd_job(work, "auto"))
        fdm = {k: statistics.median(v) for k, v in fd_times.items()}
        print("fd", {k: [round(x, 2) for x in v] for k, v in fd_times.items()}, flush=True)
        faug = faug_rows(work, max(1, a.repeats // 2))
        print("faug", faug, flush=True)
    steps = baffle_step_rows(a.repeats)
    print("baffle step", steps, flush=True)
    part = partition_rows()
    print("partition", part, flush=True)
    lines = [
        "# Speed: featherfl against a hand-written loop",
        "",
        f"Measured by `benchmarks/perf.py` on {os.cpu_count()} cores shared with other work; medians of {a.repeats} runs taken in turn.",
        "",
        "| job | measured (s, median) | ratio | goal |",
        "|---|---|---|---|",
        f"| FedAvg digits, 10 IID clients, 10 rounds, 1 epoch: featherfl `engine.vectorize=off` / hand-written loop | {med['off']:.2f} / {med['hand']:.2f} | {med['off'] / med['hand']:.2f} | <= 1.0 |",
        f"| same job: featherfl `engine.vectorize=auto` (the default) / hand-written loop | {med['auto']:.2f} / {med['hand']:.2f} | {med['auto'] / med['hand']:.2f} | <= 0.5 |",
        f"| same job, `engine.vectorize=auto` and `log.plots=false` (no PNGs; the hand loop draws none) / hand-written loop | {med['auto-noplots']:.2f} / {med['hand']:.2f} | {med['auto-noplots'] / med['hand']:.2f} | - |",
        f"| same job, one core kept busy by another process: torch default threads ({thr['default_threads']}) / automatic `engine.threads=0` | {thr['default']:.2f} / {thr['auto']:.2f} | {thr['default'] / thr['auto']:.2f} (auto is this much faster) | auto not slower |",
        f"| FD digits, 10 Dirichlet(0.5) devices, 3 rounds: `engine.vectorize=off` / `auto` (devices batched) | {fdm['off']:.2f} / {fdm['auto']:.2f} | {fdm['off'] / fdm['auto']:.2f} (auto is this much faster) | - |",
        f"| FD + FAug (`faug.enabled=true`), digits, 2 rounds, 1,000 GAN steps, one core kept busy: default `engine.threads` / `engine.threads=1` | {faug['default']:.2f} / {faug['one']:.2f} | {faug['default'] / faug['one']:.2f} | <= 1.2 |",
        *[
            f"| one BAFFLE estimate, {r['model']} ({r['params']:,} parameters), K=100, batch {b} / {101} plain forwards | {r['step_s']:.3f} / {r['forwards_s']:.3f} | {r['ratio']:.2f} | <= 1.0 |"
            for r, b in zip(steps, (32, 64))
        ],
        f"| Dirichlet(0.5) partition into 10,000 clients | {part[10_000][0]:.2f} | - | < 5 s |",
        f"| Dirichlet(0.5) partition into 100,000 clients | {part[100_000][0]:.2f} | - | < 30 s |",
        "",
        "The hand-written loop does the same arithmetic with none of featherfl's work: no encoding, byte ledger,",
        "validation, checkpoints, plots or run folder; both timings include loading and partitioning the data.",
        "Both run with one torch thread except the threads rows. BAFFLE client memory is measured in fresh",
        "processes by `benchmarks/baffle_memory.py` (results in `benchmarks/results/baffle.md`).",
        "",
        "Reproduce: `.venv/bin/python benchmarks/perf.py`",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(a.out)
    # keep the hand-written sections below the table (e.g. the BAFFLE batching measurement)
    kept = ""
    if out.exists() and "\n## " in out.read_text():
        kept = out.read_text()[out.read_text().index("\n## ") :]
    out.write_text(text + kept)
    return 0


if __name__ == "__main__":
    sys.exit(main())
