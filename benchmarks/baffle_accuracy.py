"""BAFFLE benchmark 1: accuracy and bytes vs the backprop baselines (FedSGD, FedAvg).

10 clients, IID and Dirichlet(0.5) splits; BAFFLE with forward differences at several K
and central differences at an equal forward-pass budget (central K/2 uses K passes).
Each run is a normal `featherfl run`; figures come from its summary.json (bytes are
what the ledger counted). Runs go two at a time, one torch thread each.

    .venv/bin/python benchmarks/baffle_accuracy.py --datasets digits --ks 20,100,500 --rounds 20
    .venv/bin/python benchmarks/baffle_accuracy.py --datasets mnist --mnist-dir /path/to/mnist-t10k --ks 100 --partitions iid
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def runs(a) -> list[tuple[str, list[str]]]:
    out = []
    for ds in a.datasets.split(","):
        base = ["--dataset", ds, "--rounds", str(a.rounds), "--clients", "10", "--set", "engine.threads=1"]
        if ds == "mnist":
            base += ["--set", f"data.dir={a.mnist_dir}", "--set", "baffle.batch_size=64", "--set", "fedsgd.batch_size=64"]
        for part in a.partitions.split(","):
            pb = base + (["--set", "partition.name=iid"] if part == "iid" else ["--set", "partition.name=dirichlet", "--set", "partition.alpha=0.5"])
            label = f"{ds} {part}"
            for k in (int(v) for v in a.ks.split(",")):
                out.append((f"{label} | BAFFLE forward K={k} ({k + 1} passes)", pb + ["--algorithm", "baffle", "--set", f"baffle.k={k}"]))
                if k == a.central_at:
                    out.append((f"{label} | BAFFLE central K={k // 2} ({k} passes)", pb + ["--algorithm", "baffle", "--set", f"baffle.k={k // 2}", "--set", "baffle.difference=central"]))
            out.append((f"{label} | FedSGD (backprop)", pb + ["--algorithm", "fedsgd"]))
            out.append((f"{label} | FedAvg (backprop)", pb + ["--algorithm", "fedavg"]))
    return out


def one(args: list[str], tmp: Path, i: int) -> dict:
    out = tmp / f"run{i}"
    subprocess.run([sys.executable, "-m", "featherfl", "run", *args, "--out", str(out), "--quiet"], check=True, capture_output=True, text=True)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="digits")
    ap.add_argument("--partitions", default="iid,dirichlet")
    ap.add_argument("--ks", default="20,100,500")
    ap.add_argument("--central-at", type=int, default=100, help="add central differences at this forward budget")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--mnist-dir", default="../shared/data/mnist-t10k")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    grid = runs(a)
    with tempfile.TemporaryDirectory() as d, ThreadPoolExecutor(a.jobs) as pool:
        results = list(pool.map(lambda ia: one(ia[1][1], Path(d), ia[0]), enumerate(grid)))
    print(f"{a.rounds} rounds, 10 clients, default settings of each method (mlp, hardswish for BAFFLE)")
    print("| data | method | final accuracy | rounds | MB up / client | MB down / client | wall s |")
    print("|---|---|---|---|---|---|---|")
    for (label, _), s in zip(grid, results):
        data, method = label.split(" | ")
        print(f"| {data} | {method} | {s['final_accuracy']:.3f} | {s['rounds_completed']} | {s['mb_up_per_client']:.4f} | {s['mb_down_per_client']:.3f} | {s['wall_seconds']:.0f} |")
    print("\nreproduce: .venv/bin/python benchmarks/baffle_accuracy.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
