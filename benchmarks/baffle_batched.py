"""Would batching BAFFLE's K perturbations into one call make a client step cheaper on a CPU?

One client step of BAFFLE (K forward differences on one mini-batch) three ways, timed side by
side in one process, interleaved, median of repeats, one torch thread:

1. featherfl's path (``zo.loss_differences``): the K perturbed weight vectors are written
   in place into the model's flat parameters, one plain forward each;
2. all K at once with ``torch.func.vmap`` over ``functional_call`` (K weight sets, one call);
3. the same in chunks of 25 directions.

    .venv/bin/python benchmarks/baffle_batched.py [--model lenet-baffle] [--k 100] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call, vmap  # noqa: E402

from featherfl.algorithms import zo  # noqa: E402
from featherfl.models import build_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="lenet-baffle")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(a.model, (1, 28, 28), 10, activation="hardswish").eval()
    f = zo.FlatModel(model)
    theta = f.get()
    x, y = torch.rand(a.batch, 1, 28, 28), torch.randint(10, (a.batch,))
    seeds = list(range(a.k))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def unflat(w):
        return {n: t.view(s) for n, t, s in zip(names, w.split(sizes), shapes)}

    def loss(w):
        return F.cross_entropy(functional_call(model, unflat(w), (x,)), y)

    def sequential():
        return zo.loss_differences(f, theta, x, y, seeds, 1e-4)

    def batched(chunk):
        def run():
            with torch.inference_mode():
                base = loss(theta)
                out = []
                for i in range(0, a.k, chunk):
                    z = torch.empty(min(chunk, a.k - i), theta.numel())
                    for j, s in enumerate(seeds[i : i + chunk]):
                        for _ in zo.direction_chunks(s, theta.numel(), z[j]):
                            pass
                    out.append(vmap(loss)(theta + 1e-4 * z) - base)
                return torch.cat(out)
        return run

    ways = {"featherfl (in-place, one forward per direction)": sequential, f"vmap, all {a.k} at once": batched(a.k), "vmap, chunks of 25": batched(25)}
    diff = float((sequential() - batched(a.k)()).abs().max())
    times = {k: [] for k in ways}
    for _ in range(a.repeats):
        for k, fn in ways.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times[next(iter(ways))])
    print(f"BAFFLE client step, {a.model}, K={a.k}, batch {a.batch}, 1 thread, median of {a.repeats}")
    print("| way | seconds | / featherfl |")
    print("|---|---|---|")
    for k, ts in times.items():
        print(f"| {k} | {statistics.median(ts):.3f} | {statistics.median(ts) / base:.2f} |")
    print(f"\nlargest difference between the ways' loss differences: {diff:.2e}")
    print(f"reproduce: .venv/bin/python benchmarks/baffle_batched.py --model {a.model} --k {a.k} --repeats {a.repeats}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
