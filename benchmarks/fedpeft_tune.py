"""The FedPEFT text recipe's learning-rate grid on a validation split held out from the training file.

Runs :func:`featherfl.reproduce.fedpeft_text.tune` for the given methods and rates (the
recipe's federation and budget, with or without DP) and prints validation accuracy per
method and rate. The validation split is the last 500 rows of the training file; the
test split is never read. Run two at a time on a 2-core machine (one thread each).

    .venv/bin/python benchmarks/fedpeft_tune.py --methods head,bias --grid 3e-3,1e-2,3e-2
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
    ap.add_argument("--methods", default="head,full")
    ap.add_argument("--grid", default="", help="comma-separated rates for every method given (default: the recipe's GRID)")
    ap.add_argument("--dp", action="store_true", help="tune the DP rows (sample-level DP-SGD at the recipe's epsilon)")
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    a = ap.parse_args()
    methods = a.methods.split(",")
    unknown = [m for m in methods if m not in recipe.LR]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {sorted(recipe.LR)}")
    try:
        rates = tuple(float(x) for x in a.grid.split(",")) if a.grid else None
    except ValueError:
        ap.error(f"--grid: expected comma-separated numbers, got {a.grid!r}")
    if rates is not None and any(not (0 < r < 1) for r in rates):
        ap.error("--grid: every rate must lie in (0, 1)")
    grid = {m: rates or recipe.GRID[m] for m in methods}
    recipe.check(Path(a.data_dir), a.dataset)
    z = recipe.TUNE_SIZES
    print(
        f"{a.dataset} validation (last 500 training rows): {z['clients']} clients x {z['rounds']} rounds x {z['local_steps']} local steps "
        f"of batch {z['batch']}{', DP-SGD at epsilon %g' % recipe.EPSILON if a.dp else ''}"
    )
    print("| method | lr | validation accuracy | wall s |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            for lr in grid[m]:
                t = time.perf_counter()
                scores = recipe.tune(a.dataset, Path(a.data_dir), Path(tmp) / f"{m}-{lr:g}", methods=(m,), grid={m: (lr,)}, dp=a.dp, threads=1)
                print(f"| {m} | {lr:g} | {scores[m][lr]:.4f} | {time.perf_counter() - t:.0f} |", flush=True)
    extra = (f" --grid {a.grid}" if a.grid else "") + (" --dp" if a.dp else "")
    print(f"\nreproduce: .venv/bin/python benchmarks/fedpeft_tune.py --dataset {a.dataset} --methods {a.methods}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
