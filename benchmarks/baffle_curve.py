"""Per-epoch curve of a BAFFLE run folder (e.g. the one ``featherfl reproduce baffle-mnist`` writes).

Prints a markdown table from ``metrics.jsonl``: every evaluated round with the EMA and the
raw-weights test accuracy, the cumulative ledger bytes per client and the seconds spent.

    .venv/bin/python benchmarks/baffle_curve.py runs/reproduce-baffle-mnist/baffle [--steps-per-epoch 25]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--steps-per-epoch", type=int, default=25, help="rounds per pass over a client's data (FedSGD mode)")
    a = ap.parse_args()
    run = Path(a.run_dir)
    clients = len(json.loads((run / "clients.json").read_text())["samples"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    print("| epoch | round | accuracy (EMA) | accuracy (raw weights) | test loss (EMA) | MB per client | hours |")
    print("|---|---|---|---|---|---|---|")
    seconds = 0.0
    for r in rows:
        seconds += r["seconds"]
        if r.get("accuracy") is None:
            continue
        mb = (r["cumulative_bytes_up"] + r["cumulative_bytes_down"]) / clients / 1e6
        raw = r.get("raw_accuracy")
        print(
            f"| {r['round'] / a.steps_per_epoch:g} | {r['round']} | {r['accuracy']:.4f} | {'-' if raw is None else f'{raw:.4f}'} "
            f"| {r['loss']:.4f} | {mb:.2f} | {seconds / 3600:.2f} |"
        )


if __name__ == "__main__":
    main()
