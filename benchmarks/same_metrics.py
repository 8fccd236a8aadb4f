"""Do two commits compute the same runs? ``python benchmarks/same_metrics.py COMMIT_A COMMIT_B``

A refactoring must not change what a run computes. For each commit this checks the commit out
into a temporary git worktree and runs, with that checkout first on ``PYTHONPATH``, a short
digits run of every method on the local engine, and of the cross-cutting features around them
(FAug, secure aggregation, simulated attackers, uplink compression, DP). A commit older than a
feature writes no metrics for its runs, which the table says. It then compares the two commits'
``metrics.jsonl`` row by row, every field included (bytes, accuracy, losses, reasons), except
the wall-time ones, and prints ``run | rows | identical``. Exit status 1 when any run differs.

The runs are a few rounds of five clients each, so the whole comparison takes a minute or two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--dataset", "digits", "--clients", "5", "--rounds", "3", "--seed", "1", "--quiet", "--set", "engine.threads=1", "--set", "log.plots=false"]
GAN = ["--set", "faug.gan_steps=40", "--set", "faug.check_every=0", "--set", "faug.gen_hidden=[32]", "--set", "faug.disc_hidden=[32]"]
SECAGG = ["--set", "secagg.protocol=secagg+"]
ATTACK = ["--set", "attack.fraction=0.4", "--set", "attack.kind=sign-flip"]

#: name -> featherfl run arguments (beyond COMMON)
RUNS: dict[str, list[str]] = {
    "fedavg": ["--algorithm", "fedavg"],
    "fedavg-sequential": ["--algorithm", "fedavg", "--set", "engine.vectorize=off"],
    "fedsgd": ["--algorithm", "fedsgd"],
    "fedpeft": ["--algorithm", "fedpeft", "--model", "vit-tiny"],
    "baffle": ["--algorithm", "baffle", "--set", "baffle.k=20"],
    "fd": ["--algorithm", "fd"],
    "fd+faug": ["--algorithm", "fd", "--set", "faug.enabled=true", *GAN],
    "fedavg+faug": ["--algorithm", "fedavg", "--set", "faug.enabled=true", *GAN],
    "fedavg+secagg": ["--algorithm", "fedavg", *SECAGG, "--set", "fedavg.weighting=samples"],
    "fd+secagg": ["--algorithm", "fd", *SECAGG, "--set", "fd.logit_noise=0.5"],
    "baffle+secagg": ["--algorithm", "baffle", "--set", "baffle.k=20", *SECAGG, "--set", "baffle.weighting=uniform"],
    "fedpeft-dp+secagg": ["--algorithm", "fedpeft", "--model", "vit-tiny", "--set", "fedpeft.dp=client", *SECAGG, "--set", "fedpeft.weighting=samples"],
    "fedavg+attack": ["--algorithm", "fedavg", *ATTACK],
    "fd+attack": ["--algorithm", "fd", *ATTACK],
    "fedavg+faug+attack+secagg": ["--algorithm", "fedavg", "--set", "faug.enabled=true", *GAN, *ATTACK, *SECAGG, "--set", "fedavg.weighting=samples"],
    "fedavg+compress+attack": ["--algorithm", "fedavg", "--set", "compress.method=topk", "--set", "compress.ratio=0.1", *ATTACK],
    "fedpeft+compress": ["--algorithm", "fedpeft", "--model", "vit-tiny", "--set", "compress.method=qsgd"],
}

#: fields that measure wall time, different on every run
TIMING = {"seconds"}

#: runs every configured run in one interpreter, so torch is imported once per commit
DRIVER = r"""
import json, sys
from featherfl.cli import main
for name, args in json.loads(sys.argv[1]):
    try:
        code = main(["run", *args])
    except SystemExit as e:
        code = e.code
    print(f"{name}: exit {code}", flush=True)
"""


def run_all(commit: str, work: Path) -> dict[str, list[dict] | None]:
    """Every run of RUNS at ``commit`` under ``work``; None for a run that wrote no metrics."""
    work.mkdir(parents=True)
    checkout = work / "src"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(checkout), commit], check=True, capture_output=True)
    try:
        env = {**os.environ, "PYTHONPATH": str(checkout), "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
        jobs = [(name, [*COMMON, *args, "--out", str(work / "runs" / name)]) for name, args in RUNS.items()]
        proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(jobs)], cwd=str(work), env=env, capture_output=True, text=True)
        failed = [line for line in proc.stdout.splitlines() if ": exit " in line and not line.endswith(": exit 0")]
        if proc.returncode or failed:
            sys.stderr.write(f"{commit[:12]}: " + "; ".join(failed) + "\n" + proc.stderr[-2000:])
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(checkout)], check=False, capture_output=True)
    out: dict[str, list[dict] | None] = {}
    for name in RUNS:
        p = work / "runs" / name / "metrics.jsonl"
        out[name] = [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else None
    return out


def strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in TIMING}


def compare(a: list[dict] | None, b: list[dict] | None) -> tuple[str, str]:
    """(rows, verdict) for one run: identical, or the first round and field that differ."""
    if a is None or b is None:
        return "-", "no metrics (" + ("A" if a is None else "B") + ")"
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)}", "no: row count"
    for ra, rb in zip(a, b):
        ra, rb = strip(ra), strip(rb)
        if ra != rb:
            keys = sorted(k for k in ra.keys() | rb.keys() if ra.get(k) != rb.get(k))
            return str(len(a)), f"no: round {ra.get('round')} {', '.join(keys[:4])}"
    return str(len(a)), "yes"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    commits = [subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", c + "^{commit}"], check=True, capture_output=True, text=True).stdout.strip() for c in argv]
    with tempfile.TemporaryDirectory(prefix="same-metrics-") as tmp:
        work = Path(tmp)
        results = [run_all(c, work / f"{side}-{c[:12]}") for side, c in zip("AB", commits)]
    width = max(len(n) for n in RUNS)
    print(f"A = {commits[0][:12]}, B = {commits[1][:12]}; fields ignored: {', '.join(sorted(TIMING))}")
    print(f"{'run':<{width}} | rows | identical")
    print(f"{'-' * width}-|------|----------")
    same = True
    for name in RUNS:
        rows, verdict = compare(results[0][name], results[1][name])
        same &= verdict == "yes"
        print(f"{name:<{width}} | {rows:>4} | {verdict}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
