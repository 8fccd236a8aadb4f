"""What one Flower message costs a SuperNode before and while it answers: the per-message cold start.

Flower 1.41 runs one ClientApp process per message, so every train message pays, in a fresh
Python process: importing torch, importing Flower and featherfl's ClientApp module, preparing
the node's client (``experiment.prepare_client``: its own partition and its method client, no
server), and the round's work (decode, train, encode). This script runs exactly that sequence
in fresh processes (the server's round-1 downlink is made once, here, and handed to each child
as bytes) and prints the median seconds of each phase over the repeats, wall and CPU.

What it leaves out: Flower's own dispatch (the SuperNode's poll interval, starting the process,
unpacking the FAB), which no app code can change; the deployment rows of
``benchmarks/results/engines.md`` measure whole rounds with it.

Reproduce: ``.venv/bin/python benchmarks/flower_cold_start.py [--repeats 5] [--method fedavg]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys, time
t = {}
w0, c0 = time.perf_counter(), time.process_time()
def mark(name):
    global w0, c0
    w, c = time.perf_counter(), time.process_time()
    t[name] = (w - w0, c - c0)
    w0, c0 = w, c
import torch
mark("import torch")
import flwr.app, flwr.clientapp  # noqa: E401
mark("import flwr")
import featherfl.flower_app.client_app  # noqa: F401  (what the ClientApp process loads: routes every method)
mark("import featherfl ClientApp")
from featherfl.experiment import prepare_client
from featherfl.schema import build_config
toml_text, down_path, run_id, cid = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
prepared = prepare_client(build_config(open(toml_text).read()), cid)
mark("prepare_client (own partition)")
from featherfl.engines.base import run_client
down = open(down_path, "rb").read()
state = {}
reply = run_client(prepared.client, 1, down, prepared.data, state, run_id)
mark("round 1 work (decode, train, encode)")
print(json.dumps({"phases": t, "reply_bytes": len(reply)}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--method", default="fedavg")
    ap.add_argument("--clients", type=int, default=2)
    a = ap.parse_args(argv)

    import torch

    from featherfl import wire
    from featherfl.experiment import prepare
    from featherfl.schema import build_config

    cfg = build_config(overrides=[("algorithm", a.method), ("clients", a.clients), ("engine.threads", 1)])
    p = prepare(cfg)
    down = p.algorithm.configure(1, [0])[0]
    work = Path(tempfile.mkdtemp(prefix="ff-cold-"))
    (work / "config.toml").write_text(cfg.to_toml())
    (work / "down.bin").write_bytes(wire.encode(down, 1, p.ctx.run_id))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    runs = []
    for _ in range(a.repeats):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(work / "config.toml"), str(work / "down.bin"), str(p.ctx.run_id), "0"],
            capture_output=True, text=True, env=env, check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1])["phases"])
    phases = list(runs[0])
    print(f"# Flower per-message cold start: {a.method} on digits, client 0 of {a.clients}, {a.repeats} fresh processes")
    print(f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n")
    print("| phase | wall s (median) | CPU s (median) | wall s, every run |")
    print("|---|---|---|---|")
    for ph in phases:
        walls = [r[ph][0] for r in runs]
        cpus = [r[ph][1] for r in runs]
        print(f"| {ph} | {statistics.median(walls):.2f} | {statistics.median(cpus):.2f} | {', '.join(f'{x:.2f}' for x in walls)} |")
    totals = [sum(r[ph][0] for ph in phases) for r in runs]
    cpu_totals = [sum(r[ph][1] for ph in phases) for r in runs]
    print(f"| **total** | **{statistics.median(totals):.2f}** | **{statistics.median(cpu_totals):.2f}** | {', '.join(f'{x:.2f}' for x in totals)} |")
    print(f"\nReproduce: `.venv/bin/python benchmarks/flower_cold_start.py --repeats {a.repeats} --method {a.method}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
