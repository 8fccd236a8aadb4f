"""FedPEFT benchmark: every method (full, head, bias, adapter, prompt, lora) on one setup.

Per method, from one run each on this machine: trainable parameters (and share),
encoded uplink bytes per client per round (from the ledger), final accuracy,
total MB (up + down, all clients) until accuracy first reaches 95 % of full
fine-tuning's final accuracy, wall time; with ``--dp``, sample-level DP-SGD at
the given epsilon and the accuracy drop against the non-DP table.

Setups (sizes chosen for a shared 2-core CPU):

- ``digits``: vit-tiny pretrained on digits 0-4 (train split), fine-tuned
  federated on all ten digits; 16 clients, Dirichlet alpha 0.5, 4 per round,
  20 rounds, 2 local epochs, batch 16.
- ``sst2`` / ``agnews``: all-MiniLM-L6-v2 (offline PyPI folder), 32 tokens,
  256 training / 200 test examples (stratified subsets), 4 clients, Dirichlet
  alpha 0.5, all 4 every round, 4 rounds, 1 local epoch, batch 16; full
  fine-tuning at lr 0.002 (0.02 destroyed the pretrained encoder in a first try).

Reproduce:
    .venv/bin/python benchmarks/fedpeft_methods.py --setup digits
    .venv/bin/python benchmarks/fedpeft_methods.py --setup digits --dp --epsilon 5
    .venv/bin/python benchmarks/fedpeft_methods.py --setup sst2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featherfl.schema import build_config  # noqa: E402
from featherfl.experiment import run_experiment  # noqa: E402

METHODS = ("full", "head", "bias", "adapter", "prompt", "lora")
LR = {"full": 0.02, "bias": 0.03, "lora": 0.02}  # SGD, momentum 0.9; head, adapter, prompt use 0.1 (picked by short checks on digits)

SETUPS = {
    "digits": {"dataset": "digits", "clients": 16, "rounds": 20, "engine.fraction": 0.25, "fedpeft.local_epochs": 2},
    "sst2": {"dataset": "sst2", "clients": 4, "rounds": 4, "engine.fraction": 1.0, "data.max_length": 32, "data.max_train": 256, "data.max_test": 200},
    "agnews": {"dataset": "agnews", "clients": 4, "rounds": 4, "engine.fraction": 1.0, "data.max_length": 32, "data.max_train": 256, "data.max_test": 200},
}


def config(setup: str, method: str, data_root: Path, dp: bool, eps: float, **extra):
    kv = {
        "algorithm": "fedpeft",
        "seed": 0,
        "partition.name": "dirichlet",
        "partition.alpha": 0.5,
        "fedpeft.local_epochs": 1,
        "engine.threads": 1,
        "eval.batch_size": 100,
        "fedpeft.method": method,
        "fedpeft.batch_size": 16,
        "fedpeft.lr": 0.002 if (method == "full" and setup != "digits") else LR.get(method, 0.1),
        "fedpeft.momentum": 0.9,
        **SETUPS[setup],
    }
    if setup in ("sst2", "agnews"):
        kv["data.dir"] = str(data_root / setup)
    if dp:
        kv.update({"fedpeft.dp": "sample", "fedpeft.dp_target_epsilon": eps, "fedpeft.dp_clip": 1.0, "fedpeft.dp_delta": 1e-5})
    kv.update(extra)
    return build_config(overrides=list(kv.items()))


def one_run(cfg, tmp: Path, tag: str) -> dict:
    t = time.perf_counter()
    out, s = run_experiment(cfg, tmp / tag)
    wall = time.perf_counter() - t
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_client_up = [v for r in rows for v in r["bytes_up_per_client"].values()]
    curve = [(r["accuracy"], (r["cumulative_bytes_up"] + r["cumulative_bytes_down"]) / 1e6) for r in rows]
    return {"summary": s, "wall": wall, "up_per_client": max(per_client_up), "curve": curve}


def mb_to_reach(curve, target):
    for acc, mb in curve:
        if acc is not None and acc >= target:
            return mb
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setup", choices=sorted(SETUPS), default="digits")
    ap.add_argument("--dp", action="store_true", help="sample-level DP-SGD on every client")
    ap.add_argument("--epsilon", type=float, default=5.0)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--no-cache-check", action="store_true", help="skip the head feature-cache timing run")
    a = ap.parse_args()
    torch.set_num_threads(1)
    methods = [m for m in a.methods.split(",") if m]
    tmp = Path(tempfile.mkdtemp(prefix="fedpeft-bench-"))
    res = {}
    try:
        for m in methods:
            res[m] = one_run(config(a.setup, m, Path(a.data_root), a.dp, a.epsilon), tmp, m)
            s = res[m]["summary"]
            print(f"{m}: acc {s['final_accuracy']:.4f}, {s['trainable_parameters']} trainable, {res[m]['up_per_client']} B up/client/round, {res[m]['wall']:.0f}s", flush=True)
        cache_line = ""
        if "head" in methods and not a.dp and not a.no_cache_check:
            nocache = one_run(config(a.setup, "head", Path(a.data_root), False, a.epsilon, **{"fedpeft.cache_features": False}), tmp, "head-nocache")
            same = nocache["summary"]["final_accuracy"] == res["head"]["summary"]["final_accuracy"]
            cache_line = (
                f"Head feature caching: {nocache['wall']:.1f} s without, {res['head']['wall']:.1f} s with "
                f"(speed-up x{nocache['wall'] / res['head']['wall']:.2f} for the whole run incl. evaluation; same final accuracy: {same})."
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    full_final = res["full"]["summary"]["final_accuracy"] if "full" in res else None
    target = 0.95 * full_final if full_final is not None else None
    s0 = next(iter(res.values()))["summary"]
    title = f"FedPEFT on {a.setup}" + (f", sample-level DP-SGD (target epsilon {a.epsilon:g}, delta 1e-5, clip 1.0)" if a.dp else "")
    lines = [
        f"## {title}",
        "",
        f"Setup: {s0['clients']} clients, {s0['rounds']} rounds, {s0['data_note']}; backbone: {s0['backbone']}.",
        "",
        "| method | trainable params | share | uplink B / client / round | final acc | MB to 95% of full | wall s |" + (" epsilon |" if a.dp else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if a.dp else ""),
    ]
    for m, r in res.items():
        s = r["summary"]
        mb = mb_to_reach(r["curve"], target) if target is not None else None
        row = (
            f"| {m} | {s['trainable_parameters']:,} | {100 * s['trainable_share']:.3g}% | {r['up_per_client']:,} | {s['final_accuracy']:.4f} | "
            f"{'not reached' if mb is None else f'{mb:.2f}'} | {r['wall']:.0f} |"
        )
        if a.dp:
            row += f" {s['dp_epsilon']:.2f} |"
        lines.append(row)
    lines.append("")
    if target is not None:
        lines.append(f"95 % of full fine-tuning's final accuracy = {target:.4f}. MB counts every encoded byte, up and down, of all clients.")
    if cache_line:
        lines.append(cache_line)
    lines += ["", "Command: `.venv/bin/python benchmarks/fedpeft_methods.py " + " ".join(sys.argv[1:]) + "`", ""]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "benchmarks" / "results" / f"fedpeft_{a.setup}{'_dp' if a.dp else ''}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


if __name__ == "__main__":
    main()
