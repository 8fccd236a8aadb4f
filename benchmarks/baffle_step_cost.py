"""BAFFLE benchmark 2: client step cost relative to plain inference.

ratio = time of one BAFFLE estimate (K+1 forward passes with seeded in-place perturbations)
        / ((K+1) x one plain inference forward of the same batch)
Goal <= 1.0 (the estimator adds nothing on top of the forward passes it needs).
Single thread, MNIST-shaped random batch (the cost does not depend on pixel values).

    .venv/bin/python benchmarks/baffle_step_cost.py [--k 100] [--batch 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from featherfl.algorithms import zo
from featherfl.seeding import derive_seed
from featherfl.models import build_model


def measure(name: str, k: int, batch: int, repeats: int, norm: str = "group") -> dict:
    torch.manual_seed(0)
    model = build_model(name, (1, 28, 28), 10, activation="hardswish", norm=norm)
    x = torch.rand(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    f = zo.FlatModel(model)
    theta = f.get()
    seeds = [derive_seed(0, j) for j in range(k)]
    model.eval()
    step, fwd = [], []
    for r in range(repeats + 1):
        t = time.perf_counter()
        with torch.inference_mode():
            for _ in range(k + 1):
                model(x)
        fwd.append(time.perf_counter() - t)
        t = time.perf_counter()
        zo.loss_differences(f, theta, x, y, seeds, 1e-4, "forward")
        step.append(time.perf_counter() - t)
    step, fwd = step[1:], fwd[1:]
    ms, mf = statistics.median(step), statistics.median(fwd)
    return {"model": name, "params": f.numel, "step_s": ms, "forwards_s": mf, "ratio": ms / mf}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="lenet,wrn-10-2")
    ap.add_argument("--norm", default="group", help="norm of the conv models (lenet-baffle: none, as in the paper)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"K={a.k}, batch {a.batch}, 1x28x28, norm {a.norm}, 1 thread, median of {a.repeats}")
    print("| model | parameters | BAFFLE step (s) | (K+1) plain forwards (s) | ratio (goal <= 1.0) |")
    print("|---|---|---|---|---|")
    for m in a.models.split(","):
        r = measure(m, a.k, a.batch, a.repeats, a.norm)
        print(f"| {r['model']} | {r['params']:,} | {r['step_s']:.3f} | {r['forwards_s']:.3f} | {r['ratio']:.2f} |")
    print(f"\nreproduce: .venv/bin/python benchmarks/baffle_step_cost.py --k {a.k} --batch {a.batch} --repeats {a.repeats} --models {a.models} --norm {a.norm}")


if __name__ == "__main__":
    main()
