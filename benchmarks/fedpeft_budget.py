"""FedPEFT on text with a larger local budget: does full fine-tuning pull ahead of the head?

Runs methods of the `featherfl reproduce fedpeft-<dataset>` recipe (same subset, clients,
rounds, batch, learning rates) with ``--steps`` local steps per round instead of the
recipe's, without DP, one torch thread each, and prints test accuracy per method. The
learning rates stay the ones the recipe chose on its validation split; nothing here is
chosen on the test split.

    .venv/bin/python benchmarks/fedpeft_budget.py --dataset sst2 --steps 36 --methods head,full
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featherfl.reproduce import fedpeft_text as recipe  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="sst2", choices=sorted(recipe.SIZES))
    ap.add_argument("--steps", type=int, default=36, help="local steps per round (the recipe: %s)" % recipe.SIZES["sst2"]["local_steps"])
    ap.add_argument("--methods", default="head,full")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    a = ap.parse_args()
    methods = a.methods.split(",")
    unknown = [m for m in methods if m not in recipe.LR]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {sorted(recipe.LR)}")
    recipe.check(Path(a.data_dir), a.dataset)
    z = recipe.SIZES[a.dataset]
    sizes = dict(z, max_train=0, max_test=0, local_steps=a.steps)  # the subset files hold exactly the rows to use
    model = recipe.model_folder(None)
    print(f"{a.dataset}: {z['clients']} clients x {z['rounds']} rounds x {a.steps} local steps of batch {z['batch']} (recipe: {z['local_steps']})")
    print("| method | lr | test accuracy | wall s |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = recipe.write_subset(Path(a.data_dir), a.dataset, Path(tmp) / "data", z)
        for m in methods:
            items = [(k, 1 if k == "engine.threads" else v) for k, v in recipe.settings(a.dataset, m, False, folder, False, model, sizes=sizes)]
            t = time.perf_counter()
            summary, _ = recipe._one(Path(tmp) / m, items, True)
            print(f"| {m} | {recipe.LR[m]:g} | {summary['final_accuracy']:.4f} | {time.perf_counter() - t:.0f} |", flush=True)
    print(f"\nreproduce: .venv/bin/python benchmarks/fedpeft_budget.py --dataset {a.dataset} --steps {a.steps} --methods {a.methods}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
