"""Clients per batched call of a plain MLP: one cohort's local training in calls of different sizes.

    .venv/bin/python benchmarks/call_size.py                # writes benchmarks/results/call_size.md
    .venv/bin/python benchmarks/call_size.py --passes 3 --out /tmp/call_size.md

FedAvg's ``update_many`` trains a plain MLP's clients in calls of at most
``vectorized.CACHE_BUDGET`` bytes of stacked weights (``vectorized.cache_parts``). This measures
why: 500 clients of the population MLP (64-64-10, 4,810 parameters; SGD lr 0.1, batch 10, one
local epoch), trained by ``train_clients_stacked`` in consecutive calls of N clients, for several
N, on one core (this process pinned to core 0, one torch thread). Two cohorts: 60 rows each (the
cores benchmark's job) and power-law rows (tail index 1.5, at least 10, 60 on average: the
population benchmark's MLP clients). Each pass times every N once, in an order rotated from pass
to pass; the table gives the median over passes of the milliseconds for the whole cohort, and the
ratio to the one call of 500. Every N gives every client the same trained weights, bit for bit
(checked): the calls change the time only.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from featherfl.algorithms import vectorized  # noqa: E402

SIZES = (500, 250, 167, 125, 100, 84, 64, 50, 32)
COHORT = 500


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def cohort(rows: list[int], seed: int = 0) -> tuple[nn.Module, list]:
    torch.manual_seed(seed)
    model = _mlp()
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(seed)
    runs = [vectorized.ClientRun(start, torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g), torch.Generator()) for n in rows]
    return model, runs


def train(model: nn.Module, runs: list, per_call: int) -> torch.Tensor:
    opts = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}
    for i, r in enumerate(runs):
        r.gen.manual_seed(1000 + i)  # the same batch order whatever the calls
    out = []
    for i in range(0, len(runs), per_call):
        flat, _ = vectorized.train_clients_stacked(model, runs[i : i + per_call], opts, 1, 10, train_loss=False)
        out.append(flat)
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "call_size.md"))
    a = ap.parse_args(argv)
    os.sched_setaffinity(0, {0})
    torch.set_num_threads(1)
    import population

    t0 = time.perf_counter()
    load0 = os.getloadavg()
    jobs = {"60 rows each": [60] * COHORT, "power-law rows": [int(n) for n in population.power_sizes(COHORT, 60, 10)]}
    table = {}
    for label, rows in jobs.items():
        model, runs = cohort(rows)
        ref = train(model, runs, COHORT)
        same = all(torch.equal(train(model, runs, n), ref) for n in SIZES)
        times: dict[int, list[float]] = {n: [] for n in SIZES}
        for p in range(a.passes):
            order = SIZES[p % len(SIZES):] + SIZES[: p % len(SIZES)]
            for n in order:
                t = time.perf_counter()
                train(model, runs, n)
                times[n].append(time.perf_counter() - t)
        table[label] = (times, same, sum(rows))
        print(label, {n: round(statistics.median(v) * 1e3, 1) for n, v in times.items()}, flush=True)
    load1 = os.getloadavg()
    params = 64 * 64 + 64 + 64 * 10 + 10
    chosen = len(vectorized.cache_parts(_mlp(), list(range(COHORT)))[0])
    lines = [
        "# Clients per batched call of a plain MLP",
        "",
        f"Written by `benchmarks/call_size.py` in {time.perf_counter() - t0:.0f} s. Command: `python benchmarks/call_size.py"
        + (f" --passes {a.passes}`" if a.passes != 7 else "`"),
        "",
        f"Versions: Python {platform.python_version()}, torch {torch.__version__}; one core (core 0), one torch thread.",
        f"Load average (1, 5, 15 min) at the start {', '.join(f'{v:.2f}' for v in load0)}, at the end {', '.join(f'{v:.2f}' for v in load1)}.",
        "",
        f"{COHORT} clients of the MLP 64-64-10 ({params:,} parameters, {4 * params / 1e3:.1f} KB of weights each), SGD lr 0.1, batch 10, one epoch,",
        f"trained by `train_clients_stacked` in consecutive calls of N clients; median over {a.passes} passes of the milliseconds for all {COHORT}.",
        f"`vectorized.CACHE_BUDGET` ({vectorized.CACHE_BUDGET / 2**20:.0f} MiB of stacked weights) allows {vectorized.CACHE_BUDGET // (4 * params)} clients of this model a call:",
        f"FedAvg cuts a group of 250 into {len(vectorized.cache_parts(_mlp(), list(range(250))))} calls of {len(vectorized.cache_parts(_mlp(), list(range(250)))[0])}"
        f" and {COHORT} clients into {len(vectorized.cache_parts(_mlp(), list(range(COHORT))))} calls of {chosen}.",
        "",
        "| N clients per call | stacked weights per call | " + " | ".join(f"{label}: ms (ratio to one call)" for label in table) + " |",
        "|---:|---:|" + "---:|" * len(table),
    ]
    for n in SIZES:
        cells = []
        for label, (times, _, _) in table.items():
            med, one = statistics.median(times[n]), statistics.median(times[COHORT])
            cells.append(f"{med * 1e3:.1f} ({med / one:.2f})")
        lines.append(f"| {n} | {4 * params * n / 2**20:.2f} MiB | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Same trained weights for every N, bit for bit: " + ", ".join(f"{label} {'yes' if same else 'NO'}" for label, (_, same, _) in table.items()) + ".",
        "",
        "The steps stream every client's weights and gradients (the update reads and writes every weight): with",
        "the weights of a call within a couple of MiB they stay in the cache from one kernel to the next; smaller calls",
        "pay more per-call and per-step overhead (Python and kernel launches) for the same arithmetic.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
