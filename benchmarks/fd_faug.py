"""FD, FD+FAug, FedAvg and FedAvg+FAug on the FD paper's label-deficient setup (Jeong et al. 2018, Sec. 4).

For each setting: accuracy (the seed-chosen reference device and the mean over devices;
FedAvg's single global model counts as every device's) and total bits communicated per
device over the run, split into logits / weights / seeds / generator as the ledger
counted them (encoded bytes x 8). Also a digits run with heterogeneous device models.

    .venv/bin/python benchmarks/fd_faug.py --mnist-dir /work/shared/data/mnist-t10k \
        --out benchmarks/results/fd_faug.md

Sizes are scaled to a small shared CPU (see the ``SETTINGS`` below and the table header).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from featherfl.schema import build_config
from featherfl.experiment import run_experiment

CATEGORIES = {
    "logits": ("up_logits", "down_logits"),
    "weights": ("up_weights", "down_weights"),
    "seeds": ("up_samples",),
    "generator": ("down_generator",),
    "control": ("up_control", "down_control"),
}

METHODS = {
    "local only (FD, gamma=0)": [("algorithm", "fd"), ("fd.gamma", 0.0)],
    "FD": [("algorithm", "fd")],
    "FD+FAug": [("algorithm", "fd"), ("faug.enabled", True)],
    "FedAvg": [("algorithm", "fedavg")],
    "FedAvg+FAug": [("algorithm", "fedavg"), ("faug.enabled", True)],
}


def common(steps: int) -> list:
    """Same local work per round for both families: ``steps`` SGD steps of batch 32."""
    return [
        ("partition.name", "label-deficient"),
        ("partition.target_labels", 3),
        ("partition.target_keep", 5),
        ("model.name", "cnn"),
        ("fd.local_steps", steps),
        ("fd.batch_size", 32),
        ("fedavg.max_steps", steps),
        ("fedavg.local_epochs", 1000),
        ("fedavg.batch_size", 32),
        ("engine.threads", 1),
        ("faug.check_every", 0),  # the fixed GAN budgets these figures were measured with (no stopping rule)
    ]


def settings(mnist_dir: str | None, quick: bool) -> list[tuple[str, list, list[str]]]:
    rounds = 3 if quick else 10
    digits = [("dataset", "digits"), ("clients", 4), ("rounds", rounds), ("faug.gan_steps", 100 if quick else 500)] + common(10 if quick else 30)
    out = [("digits, M=4 (S=359)", digits, list(METHODS))]
    out.append(("digits, M=4, heterogeneous cnn/mlp", digits + [("fd.models", ["cnn", "mlp"])], ["FD", "FD+FAug"]))
    if mnist_dir:
        mnist = [
            ("dataset", "mnist"),
            ("data.dir", mnist_dir),
            ("partition.samples_per_client", 2000),
            ("model.width", 8),
            ("rounds", 2 if quick else 8),
            ("faug.gan_steps", 50 if quick else 1500),
            ("faug.gan_lr", 1e-3),
            ("faug.gen_hidden", [128, 256, 512]),
            ("faug.disc_hidden", [256, 256, 256]),
        ] + common(10 if quick else 30)
        for m in (2, 4):
            out.append((f"MNIST t10k, M={m} (S=2000)", mnist + [("clients", m)], list(METHODS)))
    return out


def bits_per_device(run_dir: Path, clients: int) -> dict[str, float]:
    totals = dict.fromkeys(CATEGORIES, 0)
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        cats = json.loads(line)["bytes_by_category"]
        for name, keys in CATEGORIES.items():
            totals[name] += sum(cats.get(k, 0) for k in keys)
    return {k: 8 * v / clients for k, v in totals.items()}


def run_one(label: str, overrides: list, out_root: Path) -> dict:
    cfg = build_config(overrides=overrides)
    out = out_root / label.replace(" ", "_").replace(",", "").replace("/", "-").replace("(", "").replace(")", "").replace("=", "")
    t = time.perf_counter()
    _, summary = run_experiment(cfg, out)
    wall = time.perf_counter() - t
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    mean = summary["final_accuracy"]
    ref = last.get("accuracy_reference", mean)
    return {"mean": mean, "ref": ref, "bits": bits_per_device(out, cfg["clients"]), "wall": wall, "run_dir": str(out)}


NOTES = """# FD / FAug benchmark (label-deficient non-IID, Jeong et al. 2018 Sec. 4)

Each device gets S random training samples; for T = 3 random target labels it keeps only
R = 5. Model: the paper's CNN (`cnn`; width 8 on MNIST to fit this CPU). Both families do
the same local work per round: 30 SGD steps of batch 32 (lr 0.05, momentum 0.9); FD gamma 1,
temperature 1. Digits: 4 devices, 10 rounds, cGAN 500 steps at the paper's size
(256-512-1024 / 512-512-512). MNIST (t10k only, split 8,000/2,000 stratified): S = 2,000,
8 rounds, cGAN 1,500 steps at half width (128-256-512 / 256-256-256), Adam lr 1e-3
(300 steps at lr 2e-4 gave noise-like samples that hurt training). Accuracy is on the
common test set after the last round: the seed-chosen reference device, and the mean over
devices (FedAvg's global model is every device's model). Bits are encoded bytes x 8 from
the ledger, summed over the run, per device ("local only" is FD with gamma = 0: the
same exchange, but the teacher is ignored, i.e. independent training); `control` messages (FAug request/ack, under
120 bytes) are in the total only. Measured on a shared 2-core CPU (wall times are noisy).
"""


def mbit(x: float) -> str:
    return "-" if x == 0 else f"{x / 1e6:.3f}"


def table(results: list[tuple[str, str, dict]]) -> str:
    lines = [
        "| setting | method | acc. reference device | acc. mean over devices | logits Mbit | weights Mbit | seeds Mbit | generator Mbit | total Mbit / device | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setting, method, r in results:
        b = r["bits"]
        lines.append(
            f"| {setting} | {method} | {r['ref']:.3f} | {r['mean']:.3f} | {mbit(b['logits'])} | {mbit(b['weights'])} | {mbit(b['seeds'])} | {mbit(b['generator'])} | {sum(b.values()) / 1e6:.3f} | {r['wall']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mnist-dir", help="folder with t10k-images-idx3-ubyte.gz / t10k-labels-idx1-ubyte.gz")
    ap.add_argument("--out", help="write the markdown table here")
    ap.add_argument("--runs", default="runs/bench-fd", help="folder for the run folders")
    ap.add_argument("--quick", action="store_true", help="a smoke test: few rounds and steps")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    results = []
    for setting, overrides, methods in settings(a.mnist_dir, a.quick):
        for method in methods:
            r = run_one(f"{setting} {method}", overrides + METHODS[method] + [("seed", a.seed)], Path(a.runs))
            results.append((setting, method, r))
            print(f"{setting:40s} {method:12s} ref={r['ref']:.3f} mean={r['mean']:.3f} total={sum(r['bits'].values()) / 1e6:.3f} Mbit/device ({r['wall']:.0f}s)", flush=True)
    md = table(results)
    cmd = " ".join([".venv/bin/python benchmarks/fd_faug.py", *(argv if argv is not None else sys.argv[1:])])
    print("\n" + md + f"\n\nreproduce: {cmd}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(NOTES + "\n" + md + f"\n\nReproduce: `{cmd}`\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
