"""Decoder fuzzing at scale: >= 100,000 hostile inputs per payload kind, zero crashes allowed.

Every payload kind of every registered algorithm (found through its specs, see
``tests/support/fuzzing.py: catalog``) gets ``--n`` inputs, spread evenly over the mutation
classes: random bytes, truncation, bit flips, wrong header fields (magic, version,
round, run, kind, lengths), wrong or hostile JSON meta (missing/extra fields, wrong
types, out of range, NaN, huge, deeply nested), wrong tensors (dtype, shape, NaN/inf,
huge values, missing/extra, garbage safetensors headers) and oversized replies.

A crash is any exception other than ``PayloadError``, an accepted input that a
mutation made invalid, or an accepted payload off its spec. Prints and writes the
reject-reason table to ``benchmarks/results/fuzz_decoder.md``.

    .venv/bin/python benchmarks/fuzz_decoder.py                 # 100,000 per kind
    .venv/bin/python benchmarks/fuzz_decoder.py --n 2000        # a quick look
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "tests"))
from support import fuzzing  # noqa: E402

_ENTRIES: list = []


def _init() -> None:
    import torch

    torch.set_num_threads(1)
    _ENTRIES[:] = fuzzing.catalog()


def _chunk(args: tuple[int, int, int]) -> tuple[int, Counter, list[str], float]:
    idx, start, stop = args
    e = _ENTRIES[idx]
    names = sorted(fuzzing.MUTATIONS)
    seen: Counter = Counter()
    bugs: list[str] = []
    t = time.perf_counter()
    for i in range(start, stop):
        try:
            seen[fuzzing.check(e, names[i % len(names)], i)] += 1
        except fuzzing.DecoderBug as b:
            seen["CRASH"] += 1
            bugs.append(str(b)[:300])
    return idx, seen, bugs, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000, help="inputs per payload kind")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=5_000)
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "fuzz_decoder.md"))
    a = ap.parse_args()
    _init()
    entries = list(_ENTRIES)
    tasks = [(i, s, min(s + a.chunk, a.n)) for i in range(len(entries)) for s in range(0, a.n, a.chunk)]
    totals = [Counter() for _ in entries]
    cpu = [0.0] * len(entries)
    bugs: list[str] = []
    t0 = time.perf_counter()
    with get_context("spawn").Pool(a.jobs, initializer=_init) as pool:
        for idx, seen, b, secs in pool.imap_unordered(_chunk, tasks):
            totals[idx].update(seen)
            cpu[idx] += secs
            bugs += b
    wall = time.perf_counter() - t0
    reasons = sorted({r for c in totals for r in c if r not in ("accepted", "CRASH")})
    head = "| payload kind | direction | inputs | crashes | accepted | " + " | ".join(reasons) + " | inputs/s (one core) |"
    lines = [head, "|" + "---|" * (len(reasons) + 6)]
    for e, c, s in zip(entries, totals, cpu):
        n = sum(c.values())
        lines.append(f"| `{e.kind}` | {e.direction} | {n:,} | {c['CRASH']} | {c['accepted']:,} | " + " | ".join(f"{c[r]:,}" for r in reasons) + f" | {n / s:,.0f} |")
    table = "\n".join(lines)
    total = sum(sum(c.values()) for c in totals)
    crashes = sum(c["CRASH"] for c in totals)
    print(table)
    print(f"{total:,} inputs over {len(entries)} kinds in {wall:.0f} s wall, {crashes} crashes")
    for b in bugs[:20]:
        print("BUG", b)
    doc = [
        "# Decoder fuzzing",
        "",
        f"Measured by `benchmarks/fuzz_decoder.py --n {a.n}` on this machine: {total:,} hostile inputs over {len(entries)} payload kinds",
        f"(every kind of every registered algorithm), {crashes} crashes, {wall:.0f} s wall with {a.jobs} worker processes.",
        "Inputs are spread evenly over the mutation classes (random bytes, truncation, bit flips, header fields,",
        "JSON meta, tensors, oversized); 'accepted' are mutants that are still valid payloads (e.g. a bit flip inside",
        "tensor data that leaves a finite, in-range value) and were checked against their spec.",
        "Columns are the reject reasons `wire.decode` reported (the same tags `metrics.jsonl` counts in `rejected_reasons`).",
        "",
        table,
        "",
        "Reproduce: `.venv/bin/python benchmarks/fuzz_decoder.py`",
        "",
    ]
    Path(a.results).parent.mkdir(parents=True, exist_ok=True)
    Path(a.results).write_text("\n".join(doc))
    if crashes:
        sys.exit(1)


if __name__ == "__main__":
    main()
