"""BAFFLE benchmark 3: client peak memory, each measurement in a fresh process.

Reported: peak resident memory while doing the task minus the resident memory of the
same fresh process right after importing torch (so model, batch and working memory
count; the Python/torch runtime does not). The peak is Linux's VmHWM, reset through
/proc/self/clear_refs just before model creation.
  inference: one forward under inference_mode
  inference x101: the 101 plain forwards a K=100 estimate needs, without perturbations
                  (isolates what the allocator keeps over repeated forwards from what BAFFLE adds)
  baffle:    one BAFFLE estimate, K=100 forward differences (seeded in-place perturbations)
  backprop:  one SGD step (forward, backward, optimizer step)
Goals: baffle / inference <= 1.2, baffle / backprop <= 0.5.

    .venv/bin/python benchmarks/baffle_memory.py [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(model_name: str, mode: str, batch: int) -> None:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    from featherfl.algorithms import zo
    from featherfl.seeding import derive_seed
    from featherfl.models import build_model

    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _status("VmRSS")
    torch.manual_seed(0)
    model = build_model(model_name, (1, 28, 28), 10, activation="hardswish", norm="group")
    x = torch.rand(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    if mode.startswith("inference"):
        with torch.inference_mode():
            for _ in range(101 if mode == "inference-x101" else 1):
                model(x)
    elif mode == "baffle":
        f = zo.FlatModel(model)
        zo.loss_differences(f, f.get(), x, y, [derive_seed(0, j) for j in range(100)], 1e-4)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    print(json.dumps({"peak": _status("VmHWM") - base}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--models", default="lenet,wrn-10-2")
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.batch)
        return
    print(f"batch {a.batch}, 1x28x28, peak RSS above the bare torch process, MB (fresh process each)")
    print("| model | inference | inference x101 | BAFFLE step (K=100) | backprop step | BAFFLE/inference (goal <= 1.2) | BAFFLE/inference x101 | BAFFLE/backprop (goal <= 0.5) |")
    print("|---|---|---|---|---|---|---|---|")
    for m in a.models.split(","):
        peak = {}
        for mode in ("inference", "inference-x101", "baffle", "backprop"):
            out = subprocess.run([sys.executable, __file__, "--batch", str(a.batch), "--child", m, mode], capture_output=True, text=True, check=True)
            peak[mode] = json.loads(out.stdout.strip().splitlines()[-1])["peak"] / 2**20
        print(
            f"| {m} | {peak['inference']:.1f} | {peak['inference-x101']:.1f} | {peak['baffle']:.1f} | {peak['backprop']:.1f} | "
            f"{peak['baffle'] / peak['inference']:.2f} | {peak['baffle'] / peak['inference-x101']:.2f} | {peak['baffle'] / peak['backprop']:.2f} |"
        )
    print(f"\nreproduce: .venv/bin/python benchmarks/baffle_memory.py --batch {a.batch}")


if __name__ == "__main__":
    main()
