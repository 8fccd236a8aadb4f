"""Forward-only fine-tuning of MiniLM: BAFFLE on FedPEFT's subsets, the seed pool, low-precision
clients, beside FedPEFT with backprop. Writes ``benchmarks/results/zo_peft.md``.

Parts (every figure measured here, in this run):

A. Linear-head objective on the frozen backbone's cached features (SST-2 and AG News).
   MiniLM features (``TextClassifier.features``: masked mean of the last hidden states,
   <= 32 tokens) are computed once per example and per client precision (fp32; int8 =
   frozen Linear layers dynamically quantized, ``baffle_peft.quantize_frozen_linears``;
   bf16 = autocast), exactly what a ``fedpeft.method = head`` client with
   ``fedpeft.cache_features`` computes, and saved as an npz data set. On it, the head
   (a Linear layer, this file's ``linear_head``) trains with BAFFLE (forward-only,
   FedSGD mode, plain SGD) at K in {16, 64, 256}, with and without the seed pool
   downlink, and with FedAvg (backprop: FedPEFT-head's update, since only the head trains).
   20 clients, Dirichlet 0.5, 5 per round. BAFFLE's learning rate is chosen on a validation
   split carved out of the training file (never the test split).
B. Whole-model paths on MiniLM itself (SST-2 only, a short protocol for this CPU): BAFFLE with
   ``baffle.peft = true`` and fedpeft.method bias / lora / full (MeZO style) at K = 16, and
   FedPEFT bias / lora / full with backprop, through ``run_experiment``.
C. A client's peak memory (resident set, a fresh process per measurement) and seconds per
   round: inference forward vs a BAFFLE client update vs a FedPEFT (backprop) client update.
D. Catch-up downlink bytes after R missed rounds: replay vs seed pool vs weights (encoded payloads).
E. FedPEFT-bias (backprop through MiniLM) at part A's SST-2 sizes: the goal's reference.

Reproduce:
    .venv/bin/python benchmarks/zo_peft.py                 # all parts (about 40 min on 2 shared cores)
    .venv/bin/python benchmarks/zo_peft.py --parts A       # the cached-feature tables only
    .venv/bin/python benchmarks/zo_peft.py --parts E --e-rounds 10 --out /tmp/zo_e.md
    .venv/bin/python benchmarks/zo_peft.py --parts D --out /tmp/zo_d.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from featherfl.schema import build_config  # noqa: E402
from featherfl.experiment import run_experiment  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
CLIENTS, FRACTION, ALPHA = 20, 0.25, 0.5
SIZES = {"sst2": (4000, 872), "agnews": (4000, 1000)}  # training-file subset (80 % train / 20 % validation), test subset
KS = (16, 64, 256)
POOL = 1024
MAX_LEN = 32


def linear_head(input_shape, num_classes):
    """FedPEFT's head over cached features: one Linear layer, seeded by the run."""
    return torch.nn.Linear(int(input_shape[0]), num_classes)


# --- part A: cached features ------------------------------------------------------------------


def token_data(name: str):
    from featherfl.data.sources import load_dataset, stratified_split

    n_train, n_test = SIZES[name]
    cfg = build_config(overrides=[("algorithm", "fedpeft"), ("dataset", name), ("data.dir", str(DATA / name)), ("data.max_length", MAX_LEN), ("data.max_train", n_train), ("data.max_test", n_test)])
    ds = load_dataset(cfg)
    tr, va = stratified_split(ds.train_y.numpy(), 0.2, 0)
    return ds, torch.as_tensor(tr), torch.as_tensor(va)


def features(name: str, ds, precision: str) -> torch.Tensor:
    from featherfl.algorithms.baffle_peft import PrecisionFlat, cached_features, quantize_frozen_linears
    from featherfl.algorithms.base import Context
    from featherfl.algorithms.fedpeft import build_peft_model

    cfg = build_config(overrides=[("algorithm", "fedpeft"), ("dataset", name), ("fedpeft.method", "head")])
    model, _, _ = build_peft_model(Context(cfg, ds.input_shape, ds.num_classes, CLIENTS, "bench", {}))
    if precision == "int8":
        quantize_frozen_linears(model)
    f = PrecisionFlat(model.head, precision)
    x = torch.cat([ds.train_x, ds.test_x])
    return cached_features(model, f, x, 64)


def write_npz(path: Path, feats: torch.Tensor, server_feats: torch.Tensor, ds, tr, va, eval_on: str) -> None:
    """Training rows from the client's features (its precision), evaluation rows from the server's (fp32)."""
    n = len(ds.train_y)
    ftr, fte = feats[:n], server_feats[n:]
    if eval_on == "val":
        fte = server_feats[:n]
        ex, ey = fte[va], ds.train_y[va]
        np.savez(path, x_train=ftr[tr].numpy(), y_train=ds.train_y[tr].numpy(), x_test=ex.numpy(), y_test=ey.numpy())
        return
    ex, ey = (ftr[va], ds.train_y[va]) if eval_on == "val" else (fte, ds.test_y)
    np.savez(path, x_train=ftr[tr].numpy(), y_train=ds.train_y[tr].numpy(), x_test=ex.numpy(), y_test=ey.numpy())


def head_run(npz: Path, out: Path, algorithm: str, rounds: int, **kv) -> dict:
    base = {
        "algorithm": algorithm,
        "dataset": "npz",
        "data.dir": str(npz),
        "model.name": "zo_peft:linear_head",
        "clients": CLIENTS,
        "engine.fraction": FRACTION,
        "partition.name": "dirichlet",
        "partition.alpha": ALPHA,
        "rounds": rounds,
        "seed": 0,
        "engine.threads": 1,
        "eval.every": max(1, rounds // 10),
        "log.plots": False,
        **kv,
    }
    t0 = time.perf_counter()
    _, s = run_experiment(build_config(overrides=list(base.items())), out)
    s["wall_s"] = time.perf_counter() - t0
    return s


BAFFLE_HEAD = {"baffle.mode": "fedsgd", "baffle.optimizer": "sgd", "baffle.batch_size": 0, "baffle.sigma": 1e-3, "baffle.activation": "model"}
BAFFLE_ROUNDS, FEDAVG_ROUNDS = 300, 30


def part_a(name: str, work: Path, log) -> list[str]:
    t0 = time.perf_counter()
    ds, tr, va = token_data(name)
    log(f"[{name}] {len(tr)} train / {len(va)} validation / {len(ds.test_y)} test examples, {ds.num_classes} classes")
    feats = {}
    for prec in ("fp32", "int8", "bf16"):
        t = time.perf_counter()
        feats[prec] = features(name, ds, prec)
        log(f"[{name}] {prec} features: {time.perf_counter() - t:.0f} s")
    paths = {}
    for prec, fe in feats.items():
        for ev in ("val", "test"):
            paths[prec, ev] = work / f"{name}-{prec}-{ev}.npz"
            write_npz(paths[prec, ev], fe, feats["fp32"], ds, tr, va, ev)
    # learning rate on the validation split, K = 64
    best = None
    for lr in (0.3, 1.0, 3.0):
        s = head_run(paths["fp32", "val"], work / f"{name}-lr{lr}", "baffle", BAFFLE_ROUNDS, **BAFFLE_HEAD, **{"baffle.k": 64, "baffle.lr": lr})
        log(f"[{name}] BAFFLE-head K=64 lr={lr}: validation accuracy {s['final_accuracy']:.4f}")
        if best is None or s["final_accuracy"] > best[1]:
            best = (lr, s["final_accuracy"])
    lr = best[0]
    fa_best = None
    for flr in (0.03, 0.1, 0.3):
        s = head_run(paths["fp32", "val"], work / f"{name}-fa{flr}", "fedavg", FEDAVG_ROUNDS, **{"fedavg.lr": flr, "fedavg.local_epochs": 1})
        log(f"[{name}] FedPEFT-head (backprop) lr={flr}: validation accuracy {s['final_accuracy']:.4f}")
        if fa_best is None or s["final_accuracy"] > fa_best[1]:
            fa_best = (flr, s["final_accuracy"])
    rows = []

    def row(label, s, compute):
        mb = (s["bytes_up"] + s["bytes_down"]) / CLIENTS / 1e6
        up = s["bytes_up"] / max(1, s["rounds_completed"] * round(CLIENTS * FRACTION))
        rows.append((label, compute, s["final_accuracy"], up, s["bytes_down"] / CLIENTS / 1e6, mb, s["wall_s"]))
        log(f"[{name}] {label}: acc {s['final_accuracy']:.4f}, uplink {up:.0f} B/client/round, MB/client {mb:.4f}")

    s = head_run(paths["fp32", "test"], work / f"{name}-fedavg", "fedavg", FEDAVG_ROUNDS, **{"fedavg.lr": fa_best[0], "fedavg.local_epochs": 1})
    row(f"FedPEFT-head (backprop, {FEDAVG_ROUNDS} rounds)", s, "backprop")
    ref_up = rows[-1][3]
    for k in KS:
        s = head_run(paths["fp32", "test"], work / f"{name}-b{k}", "baffle", BAFFLE_ROUNDS, **BAFFLE_HEAD, **{"baffle.k": k, "baffle.lr": lr})
        row(f"BAFFLE-head K={k}, downlink weights", s, "forward-only")
        s = head_run(paths["fp32", "test"], work / f"{name}-r{k}", "baffle", BAFFLE_ROUNDS, **BAFFLE_HEAD, **{"baffle.k": k, "baffle.lr": lr, "baffle.downlink": "replay"})
        row(f"BAFFLE-head K={k}, downlink replay", s, "forward-only")
        s = head_run(
            paths["fp32", "test"], work / f"{name}-p{k}", "baffle", BAFFLE_ROUNDS, **BAFFLE_HEAD, **{"baffle.k": k, "baffle.lr": lr, "baffle.seed_pool": POOL, "baffle.downlink": "pool"}
        )
        row(f"BAFFLE-head K={k}, seed pool N={POOL}, downlink pool", s, "forward-only")
    for prec in ("int8", "bf16"):
        s = head_run(paths[prec, "test"], work / f"{name}-{prec}", "baffle", BAFFLE_ROUNDS, **BAFFLE_HEAD, **{"baffle.k": 64, "baffle.lr": lr})
        row(f"BAFFLE-head K=64, client precision {prec}", s, f"forward-only, {prec} backbone")
    out = [
        f"### {name}: linear head on cached MiniLM features",
        "",
        f"{len(tr)} training / {len(va)} validation examples (a stratified subset of the training file), {len(ds.test_y)} test examples; "
        f"{CLIENTS} clients, Dirichlet {ALPHA}, {round(CLIENTS * FRACTION)} per round. BAFFLE: FedSGD mode, all local data per estimate, "
        f"plain SGD lr {lr} (best of 0.3 / 1 / 3 on validation, K = 64: {best[1]:.4f}), sigma 1e-3, {BAFFLE_ROUNDS} rounds; "
        f"FedPEFT-head: FedAvg of the head, 1 local epoch, batch 32, SGD lr {fa_best[0]} (best of 0.03 / 0.1 / 0.3 on validation: {fa_best[1]:.4f}), {FEDAVG_ROUNDS} rounds.",
        "",
        "| method | client compute | test acc | uplink B / client / round | uplink vs FedPEFT-head | downlink MB / client | MB / client (up + down) | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, compute, acc, up, down, mb, wall in rows:
        out.append(f"| {label} | {compute} | {acc:.4f} | {up:,.0f} | {up / ref_up:.3f}x | {down:.4f} | {mb:.4f} | {wall:.0f} |")
    out += ["", f"Part A for {name}: {time.perf_counter() - t0:.0f} s.", ""]
    return out


# --- part B: MiniLM end to end ----------------------------------------------------------------

B_COMMON = {
    "dataset": "sst2",
    "clients": CLIENTS,
    "engine.fraction": 0.2,
    "partition.name": "dirichlet",
    "partition.alpha": ALPHA,
    "data.max_length": MAX_LEN,
    "data.max_train": 640,
    "data.max_test": 200,
    "seed": 0,
    "engine.threads": 1,
    "log.plots": False,
}


def part_b(work: Path, log, rounds: int, zo_rounds: int) -> list[str]:
    rows = []
    runs = []
    for method, lr in (("bias", 0.03), ("lora", 0.02), ("full", 0.002)):
        runs.append((f"FedPEFT-{method} (backprop)", {"algorithm": "fedpeft", "fedpeft.method": method, "fedpeft.lr": lr, "fedpeft.batch_size": 16}))
    for method in ("bias", "lora", "full"):
        runs.append(
            (
                f"BAFFLE-{method} K=16",
                {"algorithm": "baffle", "baffle.peft": True, "fedpeft.method": method, "baffle.k": 16, "baffle.sigma": 1e-3, "baffle.lr": 1e-3 if method != "full" else 1e-4, "baffle.batch_size": 16},
            )
        )
    for label, kv in runs:
        r = zo_rounds if kv["algorithm"] == "baffle" else rounds
        cfg = build_config(overrides=list({**B_COMMON, "data.dir": str(DATA / "sst2"), "rounds": r, "eval.every": r, **kv}.items()))
        t0 = time.perf_counter()
        _, s = run_experiment(cfg, work / label.split()[0])
        wall = time.perf_counter() - t0
        up = s["bytes_up"] / max(1, s["rounds_completed"] * 4)
        rows.append((label, r, s["final_accuracy"], up, (s["bytes_up"] + s["bytes_down"]) / CLIENTS / 1e6, wall))
        log(f"[B] {label}: acc {s['final_accuracy']:.4f}, uplink {up:,.0f} B/client/round, {wall:.0f} s")
    out = [
        "### SST-2 on MiniLM end to end (short protocol)",
        "",
        f"640 training examples (stratified subset), 200 test, <= {MAX_LEN} tokens, {CLIENTS} clients, Dirichlet {ALPHA}, 4 per round. "
        "FedPEFT: 1 local epoch, batch 16, SGD momentum 0.9, the learning rates of benchmarks/fedpeft_methods.py. "
        "BAFFLE: FedSGD mode, Adam (server), batch 16 per estimate, sigma 1e-3, lr 1e-3 (full: 1e-4); no tuning (CPU time).",
        "",
        "| method | rounds | test acc | uplink B / client / round | MB / client (up + down) | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for label, r, acc, up, mb, wall in rows:
        out.append(f"| {label} | {r} | {acc:.4f} | {up:,.0f} | {mb:.3f} | {wall:.0f} |")
    return out + [""]


# --- part C: memory and client seconds ----------------------------------------------------------

MEMORY_CHILD = r"""
import json, resource, sys, time, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from featherfl.algorithms.base import ClientData, Context
from featherfl.schema import build_config
mode, method = sys.argv[1], sys.argv[2]
kv = {{"dataset": "sst2", "data.dir": {data!r}, "data.max_length": {maxlen}, "data.max_train": 64, "data.max_test": 16, "clients": 1, "engine.threads": 1, "fedpeft.method": method}}
kv.update({{"algorithm": "fedpeft", "fedpeft.batch_size": 16, "fedpeft.max_steps": 4}} if mode != "baffle" else {{"algorithm": "baffle", "baffle.peft": True, "baffle.k": 16, "baffle.batch_size": 16}})
from featherfl.experiment import prepare
p = prepare(build_config(overrides=list(kv.items())))
alg = p.algorithm
client = alg.make_client()
data = p.client_data[0]
down = alg.configure(1, [0])[0]
x = data.x[:16]
import gc
gc.collect()
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the peak resident set (VmHWM) to the current one
rss0 = status("VmRSS:")
t0 = time.perf_counter()
if mode == "inference":
    with torch.inference_mode():
        client.model.eval()
        client.model(x)
else:
    client.update(1, down, data, {{}})
dt = time.perf_counter() - t0
print(json.dumps({{"rss_before_kb": rss0, "peak_kb": status("VmHWM:"), "seconds": dt}}))
"""


def part_c(log) -> list[str]:
    script = MEMORY_CHILD.format(root=str(ROOT), data=str(DATA / "sst2"), maxlen=MAX_LEN)
    rows = []
    for mode, method, label in (
        ("inference", "bias", "inference forward, batch 16 (reference)"),
        ("baffle", "bias", "BAFFLE-bias client, K=16, batch 16"),
        ("baffle", "full", "BAFFLE-full client, K=16, batch 16"),
        ("fedpeft", "bias", "FedPEFT-bias client (backprop), 4 steps of batch 16"),
        ("fedpeft", "full", "full fine-tuning client (backprop), 4 steps of batch 16"),
    ):
        r = subprocess.run([sys.executable, "-c", script, mode, method], capture_output=True, text=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
        if r.returncode:
            raise RuntimeError(r.stderr[-2000:])
        m = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append((label, m["peak_kb"] / 1024, m["rss_before_kb"] / 1024, m["seconds"]))
        log(f"[C] {label}: peak RSS {m['peak_kb'] / 1024:.0f} MiB, {m['seconds']:.1f} s")
    ref = rows[0][1]
    out = [
        "### Client peak memory and seconds (MiniLM, SST-2 batch of 16, <= 32 tokens)",
        "",
        "A fresh process per row loads the data and the model, then its peak resident set is reset (/proc/self/clear_refs) "
        "and it runs one client round (or one inference forward): peak = the largest resident set during that step.",
        "",
        "| client | resident before MiB | peak during the step MiB | peak vs inference | seconds |",
        "|---|---|---|---|---|",
    ]
    for label, mib, before, sec in rows:
        out.append(f"| {label} | {before:.0f} | {mib:.0f} | {mib / ref:.3f}x | {sec:.1f} |")
    return out + [""]


# --- part E: FedPEFT-bias (backprop) at part A's sizes ------------------------------------------


def part_e(work: Path, log, rounds: int) -> list[str]:
    """FedPEFT-bias with backprop through MiniLM on part A's SST-2 sizes (3,200 training examples,
    the same 872 test examples, 20 clients, Dirichlet 0.5, 5 per round), the goal's reference."""
    n_train, n_test = SIZES["sst2"]
    kv = {
        **B_COMMON,
        "algorithm": "fedpeft",
        "fedpeft.method": "bias",
        "fedpeft.lr": 0.03,
        "fedpeft.batch_size": 16,
        "data.dir": str(DATA / "sst2"),
        "data.max_train": int(n_train * 0.8),
        "data.max_test": n_test,
        "engine.fraction": FRACTION,
        "rounds": rounds,
        "eval.every": rounds,
    }
    t0 = time.perf_counter()
    _, s = run_experiment(build_config(overrides=list(kv.items())), work / "fedpeft-bias-a")
    wall = time.perf_counter() - t0
    up = s["bytes_up"] / max(1, s["rounds_completed"] * round(CLIENTS * FRACTION))
    mb = (s["bytes_up"] + s["bytes_down"]) / CLIENTS / 1e6
    log(f"[E] FedPEFT-bias: acc {s['final_accuracy']:.4f}, uplink {up:,.0f} B/client/round, MB/client {mb:.3f}, {wall:.0f} s")
    return [
        "### SST-2: FedPEFT-bias (backprop) at part A's sizes",
        "",
        f"{int(n_train * 0.8)} training examples (a stratified subset of the training file of part A's training size; not the same rows), the same {n_test} test examples, "
        f"{CLIENTS} clients, Dirichlet {ALPHA}, {round(CLIENTS * FRACTION)} per round, {rounds} rounds, 1 local epoch, batch 16, SGD lr 0.03 momentum 0.9 (not tuned).",
        "",
        "| method | client compute | test acc | uplink B / client / round | MB / client (up + down) | wall s |",
        "|---|---|---|---|---|---|",
        f"| FedPEFT-bias | backprop | {s['final_accuracy']:.4f} | {up:,.0f} | {mb:.3f} | {wall:.0f} |",
        "",
    ]


# --- part D: catch-up downlink after R missed rounds --------------------------------------------


def part_d(log) -> list[str]:
    """Encoded bytes of the downlink a client gets after missing R rounds, from the real payload
    classes and the server-side logic that picks them (replay: ``ReplayLog.downlink``, which falls
    back to the weights; pool: ``SeedPoolServer.downlink``); the round scalars are random stand-ins
    (their values do not change the sizes). FedSGD, shared directions, plain SGD (no optimizer state)."""
    from featherfl.algorithms.baffle_pool import SeedPoolServer
    from featherfl.algorithms.baffle_replay import ReplayLog, RoundEntry, SyncDown
    from featherfl.wire import encode

    k, n_pool = 64, POOL
    misses = (1, 4, 16, 64, 256, 1024)
    g = torch.Generator().manual_seed(0)
    out = [
        f"### Catch-up downlink after R missed rounds (K = {k}, seed pool N = {n_pool})",
        "",
        "Encoded bytes of the one downlink a client receives when it returns after missing R rounds (FedSGD, shared directions, plain SGD). "
        "replay falls back to the weights when the history is larger; pool sends the changed coefficients (8 B each) or all N (4 B each).",
        "",
        "| trainable subset | parameters | weights (B) | " + " | ".join(f"replay, R={r}" for r in misses) + " | " + " | ".join(f"pool, R={r}" for r in misses) + " |",
        "|---|---|---|" + "---|" * (2 * len(misses)),
    ]
    for label, numel in (("MiniLM SST-2 head", 770), ("MiniLM bias (+ head)", 26_498), ("MiniLM LoRA r=8 (+ head)", 74_498)):
        theta = torch.zeros(numel)
        weights = len(encode(SyncDown(theta, torch.zeros(0), 0, 0, 1)))
        rep_b, pool_b = [], []
        for r in misses:
            log_ = ReplayLog(numel)
            pool = SeedPoolServer(theta, n_pool, 12345)
            for c in (0, 1):  # client 0 always present, client 1 only in round 1 and round r + 1
                log_.downlink(c, SyncDown(theta, torch.zeros(0), 0, 0, 1), 0)
                pool.downlink(c, 0, 0, 1)
            for rnd in range(1, r + 2):
                replied = [0, 1] if rnd == 1 else [0]
                d = torch.randn(1, 1, k, generator=g)
                entry = RoundEntry((rnd,), (1,), d, True)
                log_.record(rnd, entry, replied)
                idx = [int(i) for i in torch.randint(0, n_pool, (k,), generator=g)]
                pool.add(idx, d.flatten().tolist())
                pool.record(replied)
                if rnd <= r:
                    log_.downlink(0, SyncDown(theta, torch.zeros(0), 0, rnd, 1), 0)
                    pool.downlink(0, rnd, 0, 1)
            rep_b.append(len(encode(log_.downlink(1, SyncDown(theta, torch.zeros(0), 0, r + 1, 1), 0))))
            pool_b.append(len(encode(pool.downlink(1, r + 1, 0, 1))))
        out.append(f"| {label} | {numel:,} | {weights:,} | " + " | ".join(f"{b:,}" for b in rep_b) + " | " + " | ".join(f"{b:,}" for b in pool_b) + " |")
        log(f"[D] {label}: replay {rep_b}, pool {pool_b}, weights {weights}")
    return out + [""]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="A,C,B")
    ap.add_argument("--datasets", default="sst2,agnews")
    ap.add_argument("--b-rounds", type=int, default=8, help="part B rounds for FedPEFT (backprop)")
    ap.add_argument("--b-zo-rounds", type=int, default=24, help="part B rounds for BAFFLE")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "zo_peft.md"))
    ap.add_argument("--e-rounds", type=int, default=10, help="part E rounds (FedPEFT-bias at part A's sizes)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script runs (figures meaningless)")
    a = ap.parse_args()
    if a.smoke:
        global BAFFLE_ROUNDS, FEDAVG_ROUNDS, KS
        SIZES.update(sst2=(400, 100), agnews=(400, 100))
        BAFFLE_ROUNDS, FEDAVG_ROUNDS, KS = 20, 3, (16,)
    torch.set_num_threads(1)
    parts = a.parts.split(",")
    lines = ["## Forward-only fine-tuning of MiniLM: BAFFLE on FedPEFT subsets, seed pool, low-precision clients", ""]
    t0 = time.perf_counter()

    def log(msg):
        print(f"{time.perf_counter() - t0:7.0f}s {msg}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for part in parts:
            if part == "A":
                for name in a.datasets.split(","):
                    lines += part_a(name, work, log)
            elif part == "B":
                lines += part_b(work, log, a.b_rounds, a.b_zo_rounds)
            elif part == "C":
                lines += part_c(log)
            elif part == "D":
                lines += part_d(log)
            elif part == "E":
                lines += part_e(work, log, a.e_rounds)
            Path(a.out).write_text("\n".join(lines) + "\n")
    lines += [f"Total: {time.perf_counter() - t0:.0f} s on this machine (2 CPU cores shared with other work).", "", f"Command: `.venv/bin/python benchmarks/zo_peft.py --parts {a.parts} --datasets {a.datasets} --b-rounds {a.b_rounds} --b-zo-rounds {a.b_zo_rounds}`", ""]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
