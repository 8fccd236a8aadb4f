"""``featherfl demo``: every method on the same digits split, one table, one plot.

All methods share the seed, the client count and the non-IID split, so the
table compares what each method sends and what accuracy it buys on equal
footing. Per-method settings are chosen to finish in about 3 minutes on 2 CPU
cores (``--quick``: under a minute).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from featherfl import algorithms
from featherfl.config import ConfigError
from featherfl.schema import build_config
from featherfl.experiment import run_experiment
from featherfl.report import FRONTIER_NOTE, format_table, plot_compare, table_rows

#: FedPEFT's premise is a backbone pretrained on another source: the one shipped in the package
#: learnt MNIST (other writers, scanner and pre-processing than the digits; featherfl/models/weights/README.md).
BACKBONE = {"model.pretrained": "featherfl:vit-tiny-mnist"}
COMMON = {"dataset": "digits", "clients": 10, "partition.name": "dirichlet", "partition.alpha": 0.5, "engine.threads": 1}


@dataclass
class DemoMethod:
    label: str
    algorithm: str
    rounds: int
    quick_rounds: int
    settings: dict = field(default_factory=dict)


METHODS = [
    DemoMethod("fedavg", "fedavg", 20, 6),
    DemoMethod("fedavg-topk1pct", "fedavg", 20, 6, {"compress.method": "topk", "compress.ratio": 0.01}),
    DemoMethod("fedavg-qsgd4bit", "fedavg", 20, 6, {"compress.method": "qsgd", "compress.bits": 4}),
    DemoMethod("fedsgd", "fedsgd", 60, 20),
    DemoMethod("baffle", "baffle", 60, 20, {"baffle.k": 100, "baffle.downlink": "replay"}),
    DemoMethod(
        "baffle-peft-head",
        "baffle",
        60,
        20,
        {**BACKBONE, "baffle.peft": True, "fedpeft.method": "head", "baffle.k": 64, "baffle.optimizer": "sgd", "baffle.lr": 1.0, "baffle.sigma": 1e-3, "baffle.seed_pool": 1024, "baffle.downlink": "pool"},
    ),
    DemoMethod("fedpeft-head", "fedpeft", 20, 6, {**BACKBONE, "fedpeft.method": "head"}),
    DemoMethod("fedpeft-bias", "fedpeft", 20, 6, {**BACKBONE, "fedpeft.method": "bias"}),
    DemoMethod("fedpeft-lora", "fedpeft", 20, 6, {**BACKBONE, "fedpeft.method": "lora", "fedpeft.lr": 0.02}),
    DemoMethod("fd", "fd", 20, 6, {"partition.name": "label-deficient", "fd.local_steps": 50}),
    DemoMethod("fd+faug", "fd", 20, 6, {"partition.name": "label-deficient", "fd.local_steps": 50, "faug.enabled": True, "faug.gan_steps": 300}),
]


def _settings_valid(m: DemoMethod, extra: list) -> list | None:
    """Overrides for one method, or None if this install lacks the method."""
    if m.algorithm not in algorithms.names():
        return None
    return list({**COMMON, "algorithm": m.algorithm, **m.settings}.items()) + extra


def run_demo(out: Path | None = None, quick: bool = False, seed: int = 0, quiet: bool = False, only: list[str] | None = None) -> tuple[Path, str]:
    from featherfl.runfolder import check_out_dir

    out = Path(out) if out else Path("runs") / f"demo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    unknown = sorted(set(only or []) - {m.label for m in METHODS})
    if unknown:
        raise ConfigError(f"demo --only {unknown[0]!r}: no such method label; expected one of {', '.join(m.label for m in METHODS)}")
    check_out_dir(out, fresh_only=True)  # demo has no --resume or --overwrite to suggest
    chosen = [m for m in METHODS if not only or m.label in only]
    plans = []
    for m in chosen:
        ov = _settings_valid(m, [("seed", seed), ("rounds", m.quick_rounds if quick else m.rounds)])
        if ov is None:
            print(f"featherfl demo: skipping {m.label} (algorithm {m.algorithm!r} not available)", file=sys.stderr)
            continue
        try:
            cfg = build_config(overrides=ov)
        except Exception as e:  # a method whose section keys differ in this version: say so, go on
            print(f"featherfl demo: skipping {m.label} ({e})", file=sys.stderr)
            continue
        plans.append((m, cfg))
    total = sum(cfg["rounds"] for _, cfg in plans)
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="demo", unit="round", dynamic_ncols=True)
    run_dirs, labels = [], []
    t0 = time.perf_counter()
    try:
        for m, cfg in plans:
            if bar is not None:
                bar.set_description(f"demo: {m.label}")

            def tick(row, m=m):
                if bar is not None:
                    acc = row.get("accuracy")
                    bar.set_postfix_str(f"{m.label} acc={acc:.3f}" if acc is not None else m.label)
                    bar.update(1)

            d = out / m.label
            run_experiment(cfg, d, on_round=tick)
            s = json.loads((d / "summary.json").read_text())
            s["label"] = m.label
            (d / "summary.json").write_text(json.dumps(s, indent=1))
            run_dirs.append(d)
            labels.append(m.label)
    finally:
        if bar is not None:
            bar.close()
    rows = table_rows(run_dirs)
    plot_compare(run_dirs, out / "accuracy_vs_megabytes.png")
    table = format_table(rows, "text")
    (out / "table.md").write_text(format_table(rows, "markdown") + "\n")
    (out / "table.txt").write_text(table + "\n")
    return out, table + f"\n\n{FRONTIER_NOTE}\n{len(run_dirs)} methods in {time.perf_counter() - t0:.0f} s; plot: {out / 'accuracy_vs_megabytes.png'}\nrun folder: {out}"
