"""Robustness table: clean vs 30 % dropout vs Byzantine clients (scale, sign-flip, inflated sample counts) under each rule and weighting.

For each method (FedAvg, BAFFLE, FD, whichever are registered) on the embedded digits
data, 10 clients, Dirichlet(0.5) split, seed 0, one run per cell:

- clean, with each aggregation rule (what robustness costs when nobody attacks)
- 30 % of sampled clients dropping out every round (mean)
- 20 % attackers (``attack.kind = scale`` and ``sign-flip``, ``attack.scale = 10``)
  under mean, median and trimmed-mean (beta = 0.2, so as many are cut from each
  end as there are attackers)

Prints the table and writes ``benchmarks/results/robustness.md``. Finished cells are
cached in ``runs/robustness/cache.json`` so an interrupted run continues.

    .venv/bin/python benchmarks/robustness.py                     # every registered method
    .venv/bin/python benchmarks/robustness.py --methods fedavg    # one column
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featherfl import algorithms  # noqa: E402
from featherfl.schema import build_config  # noqa: E402
from featherfl.experiment import run_experiment  # noqa: E402

# Per-method settings: each method's own defaults, with rounds enough to converge on digits.
METHODS = {
    "fedavg": {"rounds": 20},
    "baffle": {"rounds": 40},
    "fd": {"rounds": 10, "fd.local_steps": 50},
}
SECTION = {"fedavg": "fedavg", "baffle": "baffle", "fd": "fd"}
ATTACK = {"attack.fraction": 0.2, "attack.scale": 10.0}
INFLATE = {"attack.fraction": 0.1, "attack.kind": "inflate-count", "attack.claimed_samples": 10**9}
SCENARIOS = [
    ("clean", "mean", {}),
    ("clean", "median", {}),
    ("clean", "trimmed-mean", {}),
    ("30% dropout", "mean", {"engine.dropout": 0.3}),
    ("20% scale x10", "mean", {**ATTACK, "attack.kind": "scale"}),
    ("20% scale x10", "median", {**ATTACK, "attack.kind": "scale"}),
    ("20% scale x10", "trimmed-mean", {**ATTACK, "attack.kind": "scale"}),
    ("20% sign-flip x10", "mean", {**ATTACK, "attack.kind": "sign-flip"}),
    ("20% sign-flip x10", "median", {**ATTACK, "attack.kind": "sign-flip"}),
    ("20% sign-flip x10", "trimmed-mean", {**ATTACK, "attack.kind": "sign-flip"}),
    ("30% sign-flip x10 (beyond trim_beta 0.2)", "trimmed-mean", {**ATTACK, "attack.fraction": 0.3, "attack.kind": "sign-flip"}),
    # a client claiming 10^9 samples (honest update), under each weighting policy of the weighted mean;
    # FD's teacher is an unweighted mean over devices, so claims buy nothing there (no weighting key)
    ("10% inflate-count, weighting=samples", "mean", {**INFLATE, "weighting": "samples"}),
    ("10% inflate-count, weighting=capped (default)", "mean", {**INFLATE, "weighting": "capped"}),
    ("10% inflate-count, weighting=uniform", "mean", {**INFLATE, "weighting": "uniform"}),
    ("10% inflate-count, weighting=samples", "norm-clip", {**INFLATE, "weighting": "samples"}),
    ("10% inflate-count, weighting=capped (default)", "norm-clip", {**INFLATE, "weighting": "capped"}),
]


def cell(method: str, scenario: str, rule: str, extra: dict, workdir: Path, threads: int) -> dict:
    sec = SECTION[method]
    over = {"algorithm": method, "dataset": "digits", "clients": 10, "seed": 0, "engine.threads": threads, f"{sec}.aggregation": rule, f"{sec}.trim_beta": 0.2}
    over.update(METHODS[method])
    extra = dict(extra)
    weighting = extra.pop("weighting", None)
    if weighting is not None:
        if f"{sec}.weighting" not in build_config().as_flat():
            return {"accuracy": None, "config": {**over, **extra, "weighting": weighting}, "note": "unweighted"}
        over[f"{sec}.weighting"] = weighting
    over.update(extra)
    cfg = build_config(overrides=list(over.items()))
    out = workdir / f"{method}-{scenario}-{rule}".replace(" ", "_").replace("%", "pct")
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    _, s = run_experiment(cfg, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    accs = [r["accuracy"] for r in rows if r.get("accuracy") is not None]
    return {
        "accuracy": s["final_accuracy"],
        "median_last3": sorted(accs[-3:])[len(accs[-3:]) // 2] if accs else None,
        "rejected": s["clients_rejected"],
        "dropped": s["clients_dropped"],
        "skipped": s["rounds_skipped"],
        "seconds": round(time.perf_counter() - t, 1),
        "config": over,
    }


def table(results: dict, methods: list[str]) -> str:
    head = "| scenario | aggregation | " + " | ".join(f"{m} acc. | {m} vs clean | {m} rejected" for m in methods) + " |"
    lines = [head, "|---|---|" + "---|---|---|" * len(methods)]
    for scenario, rule, _ in SCENARIOS:
        row = f"| {scenario} | {rule} |"
        for m in methods:
            r = results.get(f"{m}|{scenario}|{rule}")
            clean = results.get(f"{m}|clean|mean")
            if r is None or r["accuracy"] is None:
                row += " - | - | - |"
                continue
            d = 100 * (r["accuracy"] - clean["accuracy"]) if clean else float("nan")
            row += f" {r['accuracy']:.3f} | {d:+.1f} pt | {r['rejected']} |"
        lines.append(row)
    return "\n".join(lines)


def goals(results: dict, methods: list[str]) -> str:
    """The goals per method, checked against the measured cells (final and median-of-last-3 accuracy)."""
    lines = ["| method | 30% dropout vs clean (goal >= -2 pt) | robust rule under attack vs clean (goal >= -3 pt): worst / best | plain mean under attack vs clean |", "|---|---|---|---|"]
    for m in methods:
        clean = results.get(f"{m}|clean|mean")
        if not clean:
            continue

        def d(key, field="accuracy"):
            r = results.get(key)
            return None if r is None or r[field] is None else 100 * (r[field] - clean[field])

        drop = d(f"{m}|30% dropout|mean")
        drop3 = d(f"{m}|30% dropout|mean", "median_last3")
        robust = [(d(f"{m}|{s}|{r}"), f"{s}, {r}") for s, r, _ in SCENARIOS if s.startswith("20%") and r != "mean"]
        robust = [x for x in robust if x[0] is not None]
        means = [d(f"{m}|{s}|mean") for s, r, _ in SCENARIOS if s.startswith("20%") and r == "mean"]
        worst, best = min(robust), max(robust)
        lines.append(
            f"| {m} | {drop:+.1f} pt (median of last 3 rounds: {drop3:+.1f} pt) | {worst[0]:+.1f} pt ({worst[1]}) / {best[0]:+.1f} pt ({best[1]}) | "
            + ", ".join(f"{x:+.1f} pt" for x in means if x is not None)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default=str(ROOT / "runs" / "robustness"))
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "robustness.md"))
    a = ap.parse_args()
    methods = [m for m in (a.methods or list(METHODS)) if m in algorithms.names()]
    missing = [m for m in (a.methods or list(METHODS)) if m not in algorithms.names()]
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cache_path = work / "cache.json"
    results = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    for m in methods:
        for scenario, rule, extra in SCENARIOS:
            key = f"{m}|{scenario}|{rule}"
            want = {**METHODS[m], **{k: v for k, v in extra.items() if k != "weighting"}}
            if key in results and all(results[key]["config"].get(k) == v for k, v in want.items()):
                continue
            results[key] = cell(m, scenario, rule, extra, work, a.threads)
            cache_path.write_text(json.dumps(results, indent=1))
            r = results[key]
            if r["accuracy"] is not None:
                print(f"{key}: accuracy {r['accuracy']:.4f} rejected {r['rejected']} dropped {r['dropped']} ({r['seconds']} s)", flush=True)
    shown = [m for m in METHODS if any(k.startswith(m + "|") for k in results)]
    tab = table(results, shown)
    print(tab)
    settings = "; ".join(f"{m}: " + ", ".join(f"{k}={v}" for k, v in METHODS[m].items()) for m in shown)
    doc = [
        "# Robustness on digits: dropout and Byzantine clients",
        "",
        "Measured by `benchmarks/robustness.py` (command below) on this machine, one seed (0) per cell:",
        "10 clients, Dirichlet(0.5) split, all clients sampled every round, final-round test accuracy.",
        f"Per-method settings: {settings}. Attackers: `attack.fraction = 0.2` (2 of 10 clients, fixed by the seed),",
        "`attack.scale = 10`; `trim_beta = 0.2` for trimmed-mean. 'rejected' counts replies the server's",
        "validation refused over the whole run (e.g. an attacked reply outside the receiver's value range).",
        "",
        tab,
        "",
        "Against the goals (differences to the clean run with plain mean):",
        "",
        goals(results, shown),
        "",
        "Reading it: part of each robust rule's gap is the rule itself, paid with or without attackers (the",
        "'clean, median' and 'clean, trimmed-mean' rows: on non-IID clients the coordinate-wise median is not",
        "the mean). The 30% row exceeds what trimmed-mean with trim_beta = 0.2 is built to bound; runs print a",
        "warning and record it in summary.json when the configured rule cannot survive the configured attack.",
        "The inflate-count rows: one client in ten sends an honest update but claims 10^9 samples. With",
        "`weighting = samples` the weighted mean (and norm-clip's weighted sum) is that client's model; the default",
        "`capped` weighting counts a claim at most 3x the round's median claim. FD shows '-': its teacher is an",
        "unweighted mean over the devices holding a label, so a claimed count buys nothing there.",
        "Where 'rejected' is non-zero the server's range validation refused the attacked replies",
        "(e.g. FD's uploads are probabilities in [0, 1], so a x10 or flipped row is out of range), the",
        "aggregation rule never saw them, and the run equals a run with those clients dropped.",
        "",
        "Reproduce: `.venv/bin/python benchmarks/robustness.py`" + (f" (not registered when measured: {', '.join(missing)})" if missing else ""),
        "",
    ]
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results).write_text("\n".join(doc))


if __name__ == "__main__":
    main()
