"""What secure aggregation (SecAgg+) costs: bytes per client per round and client/server seconds,
with and without ``secagg.protocol = secagg+``, at 10 to 10,000 clients per round.

Parts, each measured in this run:

1. **Real runs** on the embedded digits data, 10 clients (all per round), IID split, seed 0, each
   method with and without secagg on the local engine: final accuracy, bytes per client per round
   from the ledger (every message encoded), seconds per round. The plain uplink per client of
   BAFFLE (K scalars), FD (L x L logits) and FedAvg (the model) does not depend on the number of
   clients, so these are the plain side of every ratio below.
2. **Simulated rounds** at 10, 100, 1,000 and 10,000 clients per round (``tests/support/secagg_simulate.py``:
   the clients' and the server's real code, every message through the wire codec, no model in
   the loop) over vectors of each method's summed length, and a 100,000-value vector at 1,000
   clients. Server seconds are the median of ``--repeats`` rounds, split by step; bytes are
   exact; the protocol's lower bound (``protocol.lower_bound_up``) beside the measured uplink.
3. **End to end**: one round of FD and BAFFLE on the synthetic source at 300 (and 1,000) clients,
   plain and secagg+, wall time and bytes from the run folders.

    .venv/bin/python benchmarks/secagg.py                       # writes benchmarks/results/secagg.md
    .venv/bin/python benchmarks/secagg.py --sizes 10 100 --e2e  # quick: no 1,000/10,000 rounds, no end to end
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from featherfl.schema import build_config  # noqa: E402
from featherfl.experiment import Experiment, prepare  # noqa: E402
from featherfl.secagg import crypto, protocol  # noqa: E402
from support import secagg_simulate as simulate  # noqa: E402  (tests/support: the round simulator the tests use)

BASE = [("clients", 10), ("partition.name", "iid"), ("seed", 0), ("engine.threads", 1)]
#: each method at its defaults (under secagg+ the weighting becomes uniform; the plain runs use it too, so
#: that the two sides aggregate alike)
METHODS = {
    "BAFFLE (K=100)": [("algorithm", "baffle"), ("baffle.k", 100), ("baffle.weighting", "uniform"), ("rounds", 20)],
    "FD (L=10)": [("algorithm", "fd"), ("fd.local_steps", 50), ("rounds", 5)],
    "FedAvg": [("algorithm", "fedavg"), ("fedavg.weighting", "uniform"), ("rounds", 5)],
}
#: simulated rounds: (label, method whose plain bytes it is compared with, values summed, sizes)
BIG = 100_000


def default_words(name: str, n: int) -> tuple[int, int]:
    """The words a run of ``name`` at its defaults uses with n clients per round (the method's declaration)."""
    from featherfl.algorithms.registry import get as get_algorithm
    from featherfl.secagg import adapt, words

    cfg = build_config(overrides=BASE + METHODS[name] + [("clients", n), ("secagg.protocol", "secagg+")])
    method = get_algorithm(cfg["algorithm"])
    return words(adapt(cfg, method)[0], method.summation, method.name)


def real_run(name: str, overrides: list, secagg: bool, out: Path, ring_bits: int = 0) -> dict:
    extra = [("secagg.protocol", "secagg+"), ("secagg.ring_bits", ring_bits)] if secagg else []
    cfg = build_config(overrides=BASE + overrides + extra)
    p = prepare(cfg)
    folder = out / (name.split()[0].lower() + (f"-secagg{ring_bits or 'auto'}" if secagg else ""))
    t0 = time.perf_counter()
    summary = Experiment(p, folder, progress=False).run()
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    up = statistics.mean(r["bytes_up"] / r["clients_ok"] for r in rows)
    down = statistics.mean(r["bytes_down"] / r["clients_sampled"] for r in rows)
    dim = p.algorithm.adapter.dim(1, 0) + 1 if secagg else None
    clipped = sum(r.get("secagg_clipped_values", 0) for r in rows)
    return {"accuracy": summary["final_accuracy"], "up": up, "down": down, "seconds_per_round": wall / len(rows), "rounds": len(rows), "dim": dim, "clipped": clipped, "words": summary.get("secagg_words")}


def simulated(n: int, dim: int, bits: int, repeats: int, f: int | None = None) -> dict:
    f = bits // 2 if f is None else f
    rng = np.random.default_rng(n + dim)
    vectors = {c: rng.uniform(-1, 1, dim).astype(np.float32) for c in range(n)}
    expected = np.sum(np.stack([v.astype(np.float64) for v in vectors.values()]), axis=0) if dim * n <= 2e7 else None
    runs = []
    for _ in range(repeats):
        out = simulate.run_round(vectors, ring_bits=bits, fraction_bits=f)
        if out.skipped:
            raise RuntimeError(out.skipped)
        runs.append(out)
    out = sorted(runs, key=lambda o: o.server_cpu_seconds)[len(runs) // 2]  # the median round
    k = len(out.server.graph[0])
    steps = dict(out.server_stages)
    steps.pop("unmask_sum", None)
    steps.update({f"unmask: {key}": v for key, v in out.server.seconds.items()})
    return {
        "k": k,
        "t": out.server.t,
        "up": statistics.mean(out.bytes_up.values()),
        "down": statistics.mean(out.bytes_down.values()),
        "bound": protocol.lower_bound_up(k, dim, bits // 8),
        "client_ms": out.client_seconds / n * 1e3,
        "server_s": out.server_cpu_seconds,
        "server_wall": out.server_seconds,
        "server_all": sorted(o.server_cpu_seconds for o in runs),
        "steps": steps,
        "client_steps": {key: v / n * 1e3 for key, v in out.client_stages.items()},
        "max_error": float(np.abs(out.total - expected).max()) if expected is not None else None,
        "error_bound": simulate.error_bound(n, f),
        "f": f,
    }


def end_to_end(method: str, n: int, secagg: bool, out: Path) -> dict:
    ov = {"fd": [("algorithm", "fd"), ("fd.local_steps", 5)], "baffle": [("algorithm", "baffle"), ("baffle.k", 100), ("baffle.weighting", "samples")]}[method]
    extra = [("secagg.protocol", "secagg+")] if secagg else []
    cfg = build_config(overrides=[("dataset", "synthetic"), ("data.synthetic_samples", 20 * n), ("clients", n), ("rounds", 1), ("seed", 0), ("engine.threads", 1)] + ov + extra)
    folder = out / f"e2e-{method}-{n}-{'secagg' if secagg else 'plain'}"
    t0, c0 = time.perf_counter(), time.process_time()
    Experiment(prepare(cfg), folder, progress=False).run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    row = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
    return {"wall": wall, "cpu": cpu, "up": row["bytes_up"] / row["clients_ok"], "down": row["bytes_down"] / row["clients_sampled"], "aggregated": row["aggregated"]}


#: where a profiled end-to-end run's CPU goes: (label, test on "file:function" of each profiled function)
PROFILE_GROUPS = (
    ("X25519 key agreement (2k per client)", lambda s: "x25519" in s.lower()),
    ("HKDF key derivation", lambda s: "hkdf" in s.lower()),
    ("ChaCha20-Poly1305 seal/open", lambda s: "chacha" in s.lower() or "aead" in s.lower()),
    ("AES-CTR mask keystreams", lambda s: "ciphers" in s.lower() or "keystream" in s or "update_into" in s),
    ("Shamir sharing and rebuilding", lambda s: "secagg/crypto.py" in s and ("share" in s or "combine" in s or "lagrange" in s or "powers" in s or "random_element" in s)),
    ("the protocol's own Python (secagg/)", lambda s: "featherfl/secagg/" in s),
    ("wire codec (encode, validate, decode)", lambda s: "featherfl/wire.py" in s or "safetensors" in s or "json" in s),
    ("training and evaluation (torch, method code)", lambda s: "torch" in s or "featherfl/algorithms/" in s),
)


def profile_end_to_end(method: str, n: int, out: Path) -> dict:
    """CPU seconds of one secagg+ end-to-end run under cProfile, by what the time was spent on
    (own time of each function, grouped by ``PROFILE_GROUPS``; the profiler's overhead inflates
    Python-heavy parts)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    end_to_end(method, n, True, out)
    prof.disable()
    groups: dict[str, float] = {label: 0.0 for label, _ in PROFILE_GROUPS}
    groups["other (engine, ledger, start-up)"] = 0.0
    calls = {"X25519 key agreement (2k per client)": 0}
    for (file, _, func), (_, ncalls, tottime, _, _) in pstats.Stats(prof).stats.items():
        key = f"{file}:{func}"
        label = next((lab for lab, test in PROFILE_GROUPS if test(key)), "other (engine, ledger, start-up)")
        groups[label] += tottime
        if "exchange" in func and "x25519" in key.lower():
            calls["X25519 key agreement (2k per client)"] += ncalls
    return {"groups": groups, "exchanges": calls["X25519 key agreement (2k per client)"], "exchange_us": exchange_microseconds()}


def exchange_microseconds(count: int = 5000) -> float:
    """CPU microseconds of one X25519 agreement through ``cryptography`` on this machine, outside any profiler."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    sk = X25519PrivateKey.generate()
    publics = [X25519PrivateKey.generate().public_key() for _ in range(count)]
    c0 = time.process_time()
    for pk in publics:
        sk.exchange(pk)
    return (time.process_time() - c0) / count * 1e6


def real_runs(runs: Path) -> dict:
    real: dict[str, dict] = {}
    for name, ov in METHODS.items():
        real[name] = {"plain": real_run(name, ov, False, runs), "secagg": real_run(name, ov, True, runs), "secagg64": real_run(name, ov, True, runs, ring_bits=64)}
        r = real[name]
        print(f"{name}: accuracy {r['plain']['accuracy']:.4f} / {r['secagg']['accuracy']:.4f} ({r['secagg']['words']}) / {r['secagg64']['accuracy']:.4f} (64-bit); up {r['plain']['up']:.0f} -> {r['secagg']['up']:.0f} / {r['secagg64']['up']:.0f} B", flush=True)
    return real


def simulated_rows(real: dict, sizes: list[int], repeats: int) -> list[dict]:
    sims = []
    plan = []
    for n in sizes:
        for name in ("BAFFLE (K=100)", "FD (L=10)"):
            if n <= 1000 or name.startswith("FD"):
                plan.append((name, real[name]["secagg"]["dim"], n))
        if n <= 100:
            plan.append(("FedAvg", real["FedAvg"]["secagg"]["dim"], n))
        if n == 1000:
            plan.append((f"{BIG:,}-value vector", BIG + 1, n))
    for name, dim, n in plan:
        # 64-bit words (32 fraction bits) and the words a run of the method uses by default at this n
        variants = [(64, 32, False)]
        if name in METHODS:
            bits, f = default_words(name, n)
            variants = [v for v in variants if v[0] != bits] + [(bits, f, True)]
        elif n < 10000:
            variants.append((32, 16, False))
        for bits, f, default in variants:
            reps = 1 if n >= 10000 or dim > 50_000 else repeats
            s = simulated(n, dim, bits, reps, f)
            row = {"method": name, "n": n, "dim": dim, "bits": bits, "default": default, **s}
            plain = real.get(name, {}).get("plain")
            row["plain_up"] = plain["up"] if plain else None
            sims.append(row)
            ratio = f" ({row['up'] / row['plain_up']:.2f}x plain)" if plain else ""
            print(f"{name} n={n} {bits}-bit f={f}{' (default)' if default else ''}: k={s['k']} up {s['up']:.0f} B{ratio}, bound {s['bound']}, server {s['server_s']:.3f} CPU s {s['server_all']} ({s['server_wall']:.3f} s wall), client {s['client_ms']:.1f} ms", flush=True)

    return sims


def median_run(runs: list[dict]) -> dict:
    """The run with the median CPU seconds, with every run's wall and CPU seconds beside it."""
    out = dict(sorted(runs, key=lambda r: r["cpu"])[len(runs) // 2])
    out["all_wall"], out["all_cpu"] = [r["wall"] for r in runs], [r["cpu"] for r in runs]
    return out


def e2e_rows(sizes: list[int], runs: Path, repeats: int = 3) -> list[dict]:
    """Plain and secagg+ runs alternated ``repeats`` times after one warm-up pair (the first run in a
    process pays one-time costs: imports, allocator and thread-pool start), medians reported."""
    e2e = []
    if sizes:
        for method in ("fd", "baffle"):
            end_to_end(method, 20, False, runs)
            end_to_end(method, 20, True, runs)
    for n in sizes:
        for method in ("fd", "baffle"):
            pairs = [(end_to_end(method, n, False, runs), end_to_end(method, n, True, runs)) for _ in range(repeats)]
            p, s = median_run([a for a, _ in pairs]), median_run([b for _, b in pairs])
            e2e.append({"method": method, "n": n, "plain": p, "secagg": s})
            if method == "fd" and n == min(sizes):
                e2e[-1]["profile"] = profile_end_to_end(method, n, runs)
            print(f"e2e {method} n={n}: wall {p['wall']:.1f} -> {s['wall']:.1f} s, up {p['up']:.0f} -> {s['up']:.0f} B", flush=True)
    return e2e


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10, 100, 1000, 10000])
    ap.add_argument("--repeats", type=int, default=3, help="simulated rounds per size (the median's server seconds are reported); 10,000 clients: once")
    ap.add_argument("--e2e", type=int, nargs="*", default=[300, 1000], help="clients per round of the end-to-end runs (none: skip)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "secagg.md"))
    ap.add_argument("--rewrite", action="store_true", help="rewrite --out from the measurements saved beside it (secagg.json), measuring nothing")
    ap.add_argument("--update", action="store_true", help="re-measure only the simulated rounds at --sizes (and the end-to-end runs at --e2e) and replace those rows in the saved measurements")
    ap.add_argument("--real", action="store_true", help="with --update: re-measure the real runs too")
    a = ap.parse_args()
    saved = Path(a.out).with_suffix(".json")
    if a.rewrite or a.update:
        m = json.loads(saved.read_text())
        if a.update:
            if a.real:
                m["real"] = real_runs(ROOT / "runs" / "secagg-bench")
            sizes = set(a.sizes)
            fresh = [r for r in simulated_rows(m["real"], a.sizes, a.repeats) if r["n"] in sizes]
            m["sims"] = [r for r in m["sims"] if r["n"] not in sizes] + fresh
            m["sims"].sort(key=lambda r: (r["n"], r["dim"] > 50_000))
            fresh_e2e = e2e_rows(a.e2e, ROOT / "runs" / "secagg-bench")
            m["e2e"] = sorted([r for r in m["e2e"] if r["n"] not in set(a.e2e)] + fresh_e2e, key=lambda r: (r["n"], r["method"]))
            what = (["simulated rows at " + ", ".join(f"{n:,}" for n in sorted(sizes)) + " clients"] if sizes else []) + (["end-to-end rows at " + ", ".join(f"{n:,}" for n in a.e2e) + " clients"] if a.e2e else [])
            what = (["real runs"] if a.real else []) + what
            cmd = " ".join([".venv/bin/python benchmarks/secagg.py --update" + (" --real" if a.real else "") + " --sizes", *map(str, sorted(sizes)), "--e2e", *map(str, a.e2e)])
            m.setdefault("notes", []).append(f"The {' and '.join(what)} re-measured on {time.strftime('%Y-%m-%d')} by `{cmd}`.")
            saved.write_text(json.dumps(m, indent=1, default=float))
        a.sizes, a.repeats, a.e2e = m["args"]["sizes"], m["args"]["repeats"], m["args"]["e2e"]
        write(Path(a.out), a, m["real"], m["sims"], m["e2e"], m["seconds"], m["date"], m.get("notes", []))
        return 0
    torch.set_num_threads(1)
    runs = ROOT / "runs" / "secagg-bench"
    started = time.time()

    real = real_runs(runs)
    sims = simulated_rows(real, a.sizes, a.repeats)

    e2e = e2e_rows(a.e2e, runs)

    date = time.strftime("%Y-%m-%d")
    measured = {"args": {"sizes": a.sizes, "repeats": a.repeats, "e2e": a.e2e}, "real": real, "sims": sims, "e2e": e2e, "seconds": time.time() - started, "date": date}
    saved.write_text(json.dumps(measured, indent=1, default=float))
    write(Path(a.out), a, real, sims, e2e, measured["seconds"], date, [])
    return 0


def write(path: Path, a, real: dict, sims: list[dict], e2e: list[dict], seconds: float, date: str, notes: list[str]) -> None:
    args = []
    if a.sizes != [10, 100, 1000, 10000]:
        args += ["--sizes", *map(str, a.sizes)]
    if a.repeats != 3:
        args += ["--repeats", str(a.repeats)]
    if a.e2e != [300, 1000]:
        args += ["--e2e", *map(str, a.e2e)]
    cmd = " ".join([".venv/bin/python benchmarks/secagg.py", *args])
    L = [
        "# Secure aggregation: what it costs",
        "",
        f"Measured by `{cmd}` on {platform.machine()} with {os.cpu_count()} cores, torch {torch.__version__}, one torch thread, on {date} ({seconds / 60:.0f} minutes).",
        "The machine was shared with other jobs while this ran (load average above the core count): seconds are",
        "upper bounds and noisy, server seconds are medians of repeated rounds; bytes are exact.",
        *notes,
        "",
        "## Real runs: digits, 10 clients per round, seed 0, local engine",
        "",
        "Each method at its defaults, so secure aggregation uses the words its declaration allows at this n",
        "(`secagg.ring_bits = 0`); beside it the same run forced to 64-bit words (`secagg.ring_bits = 64`).",
        "",
        "| method | rounds | accuracy plain | secagg+ default | secagg+ 64-bit | default words | up B/client/round plain | secagg+ default | secagg+ 64-bit | up default vs plain | down plain | secagg+ default | s/round plain | secagg+ default |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in real.items():
        p, s, s64 = r["plain"], r["secagg"], r["secagg64"]
        L.append(
            f"| {name} | {p['rounds']} | {p['accuracy']:.4f} | {s['accuracy']:.4f} | {s64['accuracy']:.4f} | {s['words']} | {p['up']:,.0f} | {s['up']:,.0f} | {s64['up']:,.0f} | {s['up'] / p['up']:.2f}x | {p['down']:,.0f} | {s['down']:,.0f} | {p['seconds_per_round']:.2f} | {s['seconds_per_round']:.2f} |"
        )
    clipped = {name: r["secagg"]["clipped"] for name, r in real.items()}
    L += [
        "",
        f"Values clipped over the default runs (beyond each method's declared range): {', '.join(f'{k} {v}' for k, v in clipped.items())}.",
        "",
        "## Simulated rounds: bytes and seconds per round at 10 to 10,000 clients",
        "",
        "k = neighbours per client, t = shares needed, words = bits per masked value and fraction bits f (default: the words a run of\n"
        "that method uses at its defaults at this n, from its declared range and precision). Up B: measured uplink per client",
        "(every protocol message encoded); bound: the protocol's lower bound at this k and vector length",
        "(2 x 32 bytes of public keys + 3 x 16 bytes of shares per neighbour + the masked words; `protocol.lower_bound_up`).",
        "Server s: the server's protocol work per round (decoding the uploads, routing, rebuilding every secret, removing",
        "the masks) in CPU seconds of the process, which the other jobs' load does not inflate; the median of the repeats",
        "(all repeats in their column) and, beside it, the same round's wall seconds on the shared machine. Encoding the",
        "downlink messages is not in it. Client ms: one client's protocol work (wall).",
        "",
        "| vector | clients | values | k | t | words | up B/client | bound | actual/bound | up vs plain | down B/client | client ms | server CPU s | all repeats | server wall s | max sum error (bound) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sims:
        vs = f"{r['up'] / r['plain_up']:.2f}x" if r["plain_up"] else "-"
        err = f"{r['max_error']:.1e} ({r['error_bound']:.1e})" if r["max_error"] is not None else "-"
        L.append(
            f"| {r['method']} | {r['n']:,} | {r['dim']:,} | {r['k']} | {r['t']} | {r['bits']} (f={r.get('f', r['bits'] // 2)}){' default' if r.get('default') else ''} | {r['up']:,.0f} | {r['bound']:,} | {r['up'] / r['bound']:.2f} | {vs} | {r['down']:,.0f} | {r['client_ms']:.1f} | {r['server_s']:.3f} | {', '.join(f'{x:.3f}' for x in r['server_all'])} | {r['server_wall']:.3f} | {err} |"
        )
    prof = [r for r in sims if r["n"] == 1000 and r["method"].startswith("FD") and r["bits"] == 64] + [r for r in sims if r["n"] == 1000 and r["dim"] > 50_000 and r["bits"] == 32] + [r for r in sims if r["n"] >= 10000]
    for r in prof:
        total = r["server_s"]
        L += ["", f"### Where a {r['n']:,}-client round's seconds go: {r['method']}, {r['dim']:,} values, {r['bits']}-bit words", "", "| server step | CPU seconds | share |", "|---|---|---|"]
        for key, v in sorted(r["steps"].items(), key=lambda kv: -kv[1]):
            L.append(f"| {key} | {v:.3f} | {v / total:.0%} |")
        L += ["", "| client step (per client) | ms |", "|---|---|"]
        for key, v in sorted(r["client_steps"].items(), key=lambda kv: -kv[1]):
            L.append(f"| answering {key} | {v:.2f} |")
    if prof:
        L += [
            "",
            "`decode` is the wire codec parsing and validating each client's four uploads (keys, shares, masked vector,",
            "reveal): about 100-125 CPU microseconds per message, the same codec every method's replies go through.",
            "`unmask: shamir` gathers every revealed share and rebuilds all the round's secrets (one cached set of",
            "Lagrange coefficients when nobody drops); `unmask: masks` is one AES-CTR keystream per survivor and per",
            "pair with a dropped client, summed in blocks. At 10,000 clients the server routes 560,000 sealed share",
            "messages, and the routing steps (`send_unmask`, `take_shares`) grow faster than n: they are per-message",
            "Python objects, and the interpreter's garbage collector walks more of them each time it runs.",
        ]
    if e2e:
        L += [
            "",
            "## End to end: one round on the synthetic source (20 samples per client), local engine",
            "",
            "Wall seconds on the shared machine, and the process's CPU seconds (less inflated by the other jobs' load, not immune to",
            "it: two cores with hyper-threads shared by several jobs). Where the CPU columns are given, plain and secagg+ ran",
            "alternately three times after a warm-up pair, and each side's median-CPU run is shown (all runs listed below).",
            "",
            "| method | clients | wall s plain | secagg+ | ratio | CPU s plain | secagg+ | ratio | up B/client plain | secagg+ | ratio | down B/client plain | secagg+ |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in e2e:
            p, s = r["plain"], r["secagg"]
            cpu = f"{p['cpu']:.1f} | {s['cpu']:.1f} | {s['cpu'] / p['cpu']:.2f}" if "cpu" in p else "- | - | -"
            L.append(
                f"| {r['method']} | {r['n']:,} | {p['wall']:.1f} | {s['wall']:.1f} | {s['wall'] / p['wall']:.2f} | {cpu} | {p['up']:,.0f} | {s['up']:,.0f} | {s['up'] / p['up']:.2f}x | {p['down']:,.0f} | {s['down']:,.0f} |"
            )
        for r in e2e:
            if "all_cpu" in r["plain"]:
                fmt = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
                L.append(
                    f"\nAll runs, {r['method']} at {r['n']:,} clients: plain wall {fmt(r['plain']['all_wall'])} s, CPU {fmt(r['plain']['all_cpu'])} s;"
                    f" secagg+ wall {fmt(r['secagg']['all_wall'])} s, CPU {fmt(r['secagg']['all_cpu'])} s."
                )
        for r in e2e:
            if "profile" not in r:
                continue
            g = r["profile"]["groups"]
            total = sum(g.values())
            L += [
                "",
                f"### Where the end-to-end secagg+ round's CPU goes: {r['method'].upper()}, {r['n']:,} clients (under cProfile)",
                "",
                f"The same run as above once more under Python's profiler: own CPU time of every function, grouped ({total:.2f} s in all;",
                f"the profiler inflates Python-heavy parts). {r['profile']['exchanges']:,} X25519 agreements ran: 2k per client, k = {protocol.neighbour_count(r['n'], 0)}.",
                "",
                "| spent on | CPU s | share |",
                "|---|---|---|",
            ]
            for label, v in sorted(g.items(), key=lambda kv: -kv[1]):
                L.append(f"| {label} | {v:.2f} | {v / total:.0%} |")
            us = r["profile"].get("exchange_us")
            if us:
                floor = r["profile"]["exchanges"] * us * 1e-6
                p = r["plain"]
                L += [
                    "",
                    f"One X25519 agreement takes {us:.0f} CPU microseconds here (measured in the same run, outside the profiler), so the",
                    f"{r['profile']['exchanges']:,} agreements alone cost {floor:.2f} CPU s: against the plain round's {p['cpu']:.2f} CPU s they put the",
                    f"CPU ratio at {(p['cpu'] + floor) / p['cpu']:.2f} or more even if every other step of the protocol were free. The agreements are the",
                    "protocol's (SecAgg+: a key for the shares' encryption and one for the pairwise masks, per neighbour, at each end),",
                    "and in a deployment each device runs its own 2k in parallel with the others.",
                ]
    if e2e:
        L += [
            "",
            "The local engine runs every client's protocol work one after another in this one process (2k X25519 agreements",
            "per client per round, k of them to seal the shares and k to derive the pairwise masks), so the end-to-end wall",
            "ratio here is the serial sum of all clients' protocol work against a method whose own training per client is a",
            "few milliseconds. On devices that work in parallel a round grows by one client's protocol work (the client ms",
            "column above), the server's, and three more exchanges. The 1,000-client end-to-end figures are one run each.",
        ]
    L += [
        "",
        "Flower's own SecAgg+ beside this protocol, at the same n, k and vector length: `secagg_flower_peer.md`.",
        "",
        "## Before this protocol revision",
        "",
        "The same simulated round with the previous protocol (commit bd23859: pycryptodome Shamir through Flower, one secret",
        "per call; Fernet tokens with a 12-byte plaintext header; three safetensors tensors per key message; 52-byte",
        "shares with ids in JSON), measured on this machine on the day of this run at 100 clients and 111 values in",
        "64-bit words: 12.36 s of server wall time, 8,413 B uplink per client (keys 308, shares 5,376, masked vector 999,",
        "reveal 1,730). The previous results file gave 153-234 s of server time per round at 1,000 clients, almost all",
        "of it rebuilding secrets at about 0.15 s each.",
        "",
        "Where the uplink goes now, per client at k neighbours and d values of w bytes: one 80-byte key message (two",
        "raw X25519 keys and a 16-byte commitment), k sealed messages of 48 bytes (two 16-byte shares and a 16-byte",
        "Poly1305 tag; the header is associated data, not sent), d x w bytes of masked words, and k revealed 16-byte",
        "shares; each of the four messages adds the wire codec's envelope and safetensors header (about 100 bytes).",
        "Above the lower bound: the tags (16 k), the commitment (16) and those four headers.",
    ]
    L += ["", "## Goals", ""]

    def sim(method, n, bits, big=False):
        for r in sims:
            if r["n"] == n and r["bits"] == bits and (r["dim"] > 50_000 if big else r["method"] == method):
                return r
        return None

    for method in ("BAFFLE (K=100)", "FD (L=10)"):
        r = sim(method, 1000, 64)
        if r:
            L.append(f"- Server seconds at 1,000 clients, {method}, 64-bit words: {r['server_s']:.2f} CPU s, {r['server_wall']:.2f} s wall on the shared machine (goal <= 1 s: {'met' if r['server_s'] <= 1 else 'not met'} in CPU seconds).")
    r = sim(None, 1000, 32, big=True)
    if r:
        L.append(f"- Server seconds at 1,000 clients, {r['dim']:,} values, 32-bit words: {r['server_s']:.2f} CPU s, {r['server_wall']:.2f} s wall (goal <= 5 s: {'met' if r['server_s'] <= 5 else 'not met'} in CPU seconds).")
    r64 = sim(None, 1000, 64, big=True)
    if r64:
        L.append(f"- The same with 64-bit words: {r64['server_s']:.2f} CPU s, {r64['server_wall']:.2f} s wall.")
    for method, goal in (("BAFFLE (K=100)", 6), ("FD (L=10)", 6), ("FedAvg", 1.2)):
        for r in sims:
            if r["n"] == 100 and r["method"] == method and r["plain_up"]:
                ratio = r["up"] / r["plain_up"]
                if r.get("default"):
                    L.append(f"- Uplink at 100 clients, {method}, the default {r['bits']}-bit words: {ratio:.2f}x plain (goal <= {goal}x at the defaults: {'met' if ratio <= goal else 'not met'}).")
                else:
                    L.append(f"- Uplink at 100 clients, {method}, {r['bits']}-bit words (the default before the declarations): {ratio:.2f}x plain.")
    for r in e2e:
        if r["method"] == "fd" and r["n"] == 300:
            w, u = r["secagg"]["wall"] / r["plain"]["wall"], r["secagg"]["up"] / r["plain"]["up"]
            c = r["secagg"]["cpu"] / r["plain"]["cpu"] if "cpu" in r["plain"] else None
            cpu = f", CPU time {c:.2f}x" if c else ""
            met = "met" if w <= 1.3 and (c is None or c <= 1.3) else "not met"
            L.append(f"- End to end at 300 clients, FD, medians of three alternated runs on the shared machine: wall time {w:.2f}x{cpu} (goal <= 1.3: {met}; every client's protocol work runs serially in this one process, see the profile above), uplink {u:.2f}x (goal <= 8x: {'met' if u <= 8 else 'not met'}).")
    L.append(
        "- Word size: each method declares the range and precision of what it sums (`Summation.value_range`), and"
        " `secagg.ring_bits = 0` (the default) takes the smallest ring that holds the round's sum: 32-bit words for"
        " BAFFLE, FD and FedAvg at their defaults up to about 1,000 clients per round (see `docs/security.md`)."
        " A hand-chosen ring that cannot hold the declared range is refused in one line naming the key."
    )
    ten = [r for r in sims if r["n"] >= 10000]
    for r in ten:
        L.append(f"- {r['n']:,} clients per round simulated in this run ({r['method']}, {r['bits']}-bit): server {r['server_s']:.2f} CPU s, {r['server_wall']:.2f} s wall.")
    L.append("")
    path.write_text("\n".join(L))
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
