"""How far the population benchmark's CNN job can go on this CPU: the round's convolution and
pooling kernels alone, against featherfl's round and pfl-research's.

The job is population.py's CNN job (1,000 MNIST writers, cohort 50, batch 10, one local epoch,
30 rounds, one thread). A featherfl run records the sample count of every batched local step
(``conv_batched.forward_backward``), round by round. Then, in a fresh process on the same core,
only the kernels those steps need are replayed, with their inputs made up front (no gathers, no
index arithmetic, no Python between them, no autograd):

* ``per-client kernels``: what the lowering calls, each sample with its own client's weights:
  the first convolution as im2col and batched products (forward, weight gradient), the second
  as a grouped convolution with a group per sample (forward, input and weight gradients), and
  two max poolings forward and backward;
* ``shared-weight kernels``: the same passes as plain convolutions with one set of weights for
  every sample, as if all clients held the same model (true only of a round's first step, and
  even there each client needs its own weight gradient). No way of training per-client weights
  runs below this with these kernels.

Both are summed per round and set against featherfl's in-process seconds per round and, with
``--pfl-python``, pfl's (its time inside ``FederatedAveraging.run`` over the rounds), measured in
alternation on the same core. The issue's goal is featherfl / pfl <= 0.20 in process.

    python benchmarks/cnn_floor.py --data /tmp/pp/mnist-writers1000.npz --init /tmp/pp/init-cnn.pt --reps 3 --pfl-python /tmp/pflvenv/bin/python

(the data and the initial weights are the files population.py writes; the pfl environment is
the one it makes). Writes benchmarks/results/cnn_floor.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENV = {"FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def record(args: list[str], out_json: str) -> None:
    """Child: run the featherfl job in this process; write each round's step sample counts, its
    seconds (metrics.jsonl) and the time inside the batched local training."""
    sys.path[:0] = [str(ROOT), str(HERE)]
    from featherfl.algorithms import conv_batched, vectorized

    steps: list[list[int]] = []
    spent: list[float] = []
    real_fb, real_train = conv_batched.forward_backward, vectorized.train_clients_stacked

    def fb(plan_, p, x, *rest):
        steps[-1].append(int(x.shape[0]))
        return real_fb(plan_, p, x, *rest)

    def train(*a, **k):
        steps.append([])
        t = time.perf_counter()
        try:
            return real_train(*a, **k)
        finally:
            spent.append(time.perf_counter() - t)

    conv_batched.forward_backward, vectorized.train_clients_stacked = fb, train
    from featherfl.cli import main

    out = Path(args[args.index("--out") + 1])
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time (the CLI refuses a folder that holds one)
    code = main(args)
    if code:
        raise SystemExit(f"the featherfl run exited {code}")
    if not any(steps):
        raise SystemExit("the run made no batched conv steps (the lowering was not used): nothing to replay")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    Path(out_json).write_text(json.dumps({"steps": steps, "train": spent, "seconds": [r["seconds"] for r in rows], "accuracy": rows[-1]["accuracy"]}))


def replay(steps_json: str, reps: int, out_json: str) -> None:
    """Child: time the kernels of every recorded step, per round, ``reps`` times; write the medians."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    aten = torch.ops.aten
    steps = json.loads(Path(steps_json).read_text())["steps"]
    sizes = sorted({n for r in steps for n in r})
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g)

    def pool(h):  # the lowering's max pooling: channels-last, forward and backward
        hc = h.contiguous(memory_format=torch.channels_last)
        out, ind = aten.max_pool2d_with_indices(hc, [2, 2], [2, 2], [0, 0], [1, 1], False)
        aten.max_pool2d_with_indices_backward(out.contiguous(memory_format=torch.channels_last), hc, [2, 2], [2, 2], [0, 0], [1, 1], False, ind)

    def per_client(n: int):
        x, w1, g1 = rnd(n, 1, 28, 28), rnd(n, 8, 25), rnd(n, 8, 576)
        h, w2, g2 = rnd(1, n * 8, 12, 12), rnd(n * 16, 8, 5, 5), rnd(1, n * 16, 8, 8)
        a1, a2 = rnd(n, 8, 24, 24), rnd(n, 16, 8, 8)

        def run():
            st = x.stride()
            cols = x.as_strided((n, 1, 5, 5, 24, 24), (st[0], st[1], st[2], st[3], st[2], st[3])).reshape(n, 25, 576)
            torch.bmm(w1, cols)
            torch.bmm(g1, cols.transpose(1, 2))
            pool(a1)
            F.conv2d(h, w2, None, 1, 0, 1, n)
            aten.convolution_backward(g2, h, w2, None, [1, 1], [0, 0], [1, 1], False, [0, 0], n, [True, True, False])
            pool(a2)

        return run

    def shared(n: int):
        x, w1, g1 = rnd(n, 1, 28, 28), rnd(8, 1, 5, 5), rnd(n, 8, 24, 24)
        h, w2, g2 = rnd(n, 8, 12, 12), rnd(16, 8, 5, 5), rnd(n, 16, 8, 8)
        a1, a2 = rnd(n, 8, 24, 24), rnd(n, 16, 8, 8)

        def run():
            F.conv2d(x, w1)
            aten.convolution_backward(g1, x, w1, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [False, True, False])
            pool(a1)
            F.conv2d(h, w2)
            aten.convolution_backward(g2, h, w2, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, True, False])
            pool(a2)

        return run

    result = {}
    for name, make in (("per_client", per_client), ("shared", shared)):
        runs = {n: make(n) for n in sizes}
        for n in sizes:  # warm: oneDNN builds its kernels for each shape once
            runs[n]()
        per_round = []
        for _ in range(reps):
            t = time.perf_counter()
            for r in steps:
                for n in r:
                    runs[n]()
            per_round.append((time.perf_counter() - t) / len(steps))
        result[name] = statistics.median(per_round)
    Path(out_json).write_text(json.dumps(result))


def _child(mode: str, extra: list[str], core: int | None) -> None:
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--{mode}"] + extra
    if core is not None:
        cmd = ["taskset", "-c", str(core)] + cmd
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, **ENV, "PYTHONPATH": os.pathsep.join([str(ROOT), str(HERE)])})


def main() -> None:
    if "--record" in sys.argv:
        i = sys.argv.index("--record")
        record(sys.argv[sys.argv.index("--") + 1 :], sys.argv[i + 1])
        return
    if "--replay" in sys.argv:
        i = sys.argv.index("--replay")
        replay(sys.argv[i + 1], int(sys.argv[i + 2]), sys.argv[i + 3])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/tmp/pp/mnist-writers1000.npz")
    ap.add_argument("--init", default="/tmp/pp/init-cnn.pt")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--reps", type=int, default=3, help="alternating featherfl / pfl / replay runs")
    ap.add_argument("--core", type=int, default=0, help="CPU core to pin the runs to (-1: no pinning)")
    ap.add_argument("--pfl-python", default="", help="python of an environment with pfl 0.6.0 (empty: no pfl runs)")
    ap.add_argument("--out", default=str(HERE / "results" / "cnn_floor.md"))
    a = ap.parse_args()
    for f in (a.data, a.init):
        if not Path(f).is_file():
            raise SystemExit(f"no file {f}: run benchmarks/population.py first (it writes the CNN job's npz and initial weights)")
    core = None if a.core < 0 else a.core
    sys.path.insert(0, str(HERE))
    from cnn_step import job_args, one_pfl

    load_before = os.getloadavg()
    fl, pfl, floors = [], [], []
    for rep in range(a.reps):
        rec = f"/tmp/cnn_floor-{rep}.json"
        _child("record", [rec, "--"] + job_args(a.data, a.init, f"/tmp/cnn_floor-run{rep}", a.rounds), core)
        fl.append(json.loads(Path(rec).read_text()))
        if a.pfl_python:
            pfl.append(one_pfl(a.pfl_python, a.data, a.init, a.rounds, core)[0])
        _child("replay", [rec, "5", f"/tmp/cnn_floor-replay{rep}.json"], core)
        floors.append(json.loads(Path(f"/tmp/cnn_floor-replay{rep}.json").read_text()))
        print(f"rep {rep}: featherfl {statistics.mean(fl[-1]['seconds']):.4f} s/round, kernels {floors[-1]['per_client']:.4f} (per-client) {floors[-1]['shared']:.4f} (shared)" + (f", pfl {pfl[-1]:.4f}" if pfl else ""), flush=True)
    load_after = os.getloadavg()

    med = statistics.median
    fl_round = med(statistics.mean(r["seconds"]) for r in fl)
    fl_train = med(sum(r["train"]) / len(r["seconds"]) for r in fl)
    per_client, shared_ = med(f["per_client"] for f in floors), med(f["shared"] for f in floors)
    steps = fl[0]["steps"]
    samples = sum(sum(r) for r in steps) / len(steps)
    lines = [
        "# The CNN job's kernels alone, against featherfl's and pfl's rounds",
        "",
        f"Written by `benchmarks/cnn_floor.py`. Command: `python benchmarks/cnn_floor.py --data {a.data} --init {a.init} --rounds {a.rounds} --reps {a.reps} --core {a.core}"
        + (f" --pfl-python {a.pfl_python}`" if a.pfl_python else "`"),
        "",
        "population.py's CNN job: FedAvg, 1,000 MNIST writers, cohort 50, batch 10, one local epoch, lr 0.05, one thread,",
        f"{a.rounds} rounds. A round trains {samples:.0f} samples on average in {sum(len(r) for r in steps) / len(steps):.1f} batched steps. Runs alternate",
        "(featherfl, pfl, kernel replay), each a fresh process" + (f" pinned to core {core}" if core is not None else "") + "; medians over the repetitions.",
        f"Load average (1, 5, 15 min): {', '.join(f'{x:.1f}' for x in load_before)} at the start, {', '.join(f'{x:.1f}' for x in load_after)} at the end.",
        "",
        "| per round | seconds | per sample (us) |" + (" / pfl's round |" if pfl else ""),
        "|---|---:|---:|" + ("---:|" if pfl else ""),
    ]
    pfl_round = med(pfl) if pfl else None

    def row(name: str, s: float) -> str:
        return f"| {name} | {s:.4f} | {s / samples * 1e6:.0f} |" + (f" {s / pfl_round:.2f} |" if pfl else "")

    lines += [
        row("featherfl, the whole round (`seconds`)", fl_round),
        row("featherfl, its batched local training", fl_train),
        row("per-client kernels alone (the lowering's)", per_client),
        row("shared-weight kernels alone (a bound)", shared_),
    ]
    if pfl:
        lines.append(row("pfl-research 0.6.0, the whole round", pfl_round))
    lines += [
        "",
        f"featherfl's round outside its batched training: {fl_round - fl_train:.4f} s (sampling, the engine, aggregation, the ledger, the evaluation of the last round).",
    ]
    if pfl:
        budget = 0.20 * pfl_round
        lines += [
            "",
            f"The goal, featherfl / pfl <= 0.20 in process, is a round of at most {budget:.4f} s here. The shared-weight kernels"
            f" alone take {shared_ / budget:.2f} of it, and the lowering's own kernels {per_client / budget:.2f};"
            f" with the rest of the round ({fl_round - fl_train:.4f} s) the shared-weight bound is {(shared_ + fl_round - fl_train) / pfl_round:.2f} of pfl's round.",
        ]
    lines += ["", "featherfl accuracy (every run): " + ", ".join(f"{r['accuracy']:.4f}" for r in fl), ""]
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
