"""Cross-device at population scale: featherfl against pfl-research (``pfl`` 0.6.0).

    .venv/bin/python benchmarks/population.py                     # writes benchmarks/results/population.md
    .venv/bin/python benchmarks/population.py --sizes 1000 --pairs 1 --out /tmp/pop.md

The same job for both simulators: FedAvg on one synthetic npz (64 features, 10 classes, 60 rows
per client, a ``client_train`` column so both see the same clients), the MLP 64-64-10 of
``benchmarks/population_model.py`` (``--model population_model:mlp``) from the same initial weights, SGD lr 0.1 without momentum,
batch 10, 1 local epoch, 50 clients per round, 30 rounds, uniform averaging (every client holds
60 rows, so sample weighting is the same thing). Populations of 10^3, 10^4 and 10^5 clients.

Each job is a whole process pinned to one core (``taskset -c 0``); the two simulators run in
alternating pairs and the table gives medians (this 2-core machine is shared with other work,
so the ratios measured side by side are what to read). Reported: whole-process wall time,
in-process seconds per round (featherfl: the rounds' own ``seconds`` in ``metrics.jsonl``;
pfl: the time inside ``FederatedAveraging.run``), peak RSS (``wait4``), accuracy on the same
10,000 test rows. Besides: partitioning 100,000 clients x 60 rows, and the client-state store
at 100,000 clients x 10,000 floats of state each (RAM against the population).

pfl is installed by this script in a virtual environment of its own (``--pfl-venv``, default
/tmp/pflvenv): torch 2.13.0 first (the CPU build from the local wheel folder, so no CUDA build
is pulled), then pfl 0.6.0. It is never a dependency of featherfl.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS, FEATURES, CLASSES, TEST_ROWS = 60, 64, 10, 10_000
COHORT, ROUNDS, LR, BATCH = 50, 30, 0.1, 10
ENV = {"FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}


# --- data and initial weights ------------------------------------------------------------------


def make_npz(path: Path, clients: int, seed: int = 0) -> None:
    """Gaussian class clusters, noisy enough that 30 rounds land well below 100 %; rows of one client
    are contiguous and its labels skewed (a Dirichlet(1) mix per client), as devices' data are."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, (CLASSES, FEATURES)).astype(np.float32)
    mix = rng.dirichlet(np.ones(CLASSES), size=clients)
    y = (rng.random((clients, ROWS, 1)) > np.cumsum(mix, axis=1)[:, None, :]).sum(axis=2).reshape(-1).clip(0, CLASSES - 1)
    x = np.empty((clients * ROWS, FEATURES), dtype=np.float32)
    for i in range(0, len(y), 1_000_000):  # in blocks: no float64 temporary of the whole array
        yy = y[i : i + 1_000_000]
        x[i : i + len(yy)] = centers[yy] + rng.normal(0.0, 3.2, (len(yy), FEATURES)).astype(np.float32)
    ty = rng.integers(0, CLASSES, TEST_ROWS)
    tx = (centers[ty] + rng.normal(0.0, 3.2, (TEST_ROWS, FEATURES))).astype(np.float32)
    np.savez(path, x_train=x, y_train=y.astype(np.int64), x_test=tx, y_test=ty.astype(np.int64), client_train=np.repeat(np.arange(clients, dtype=np.int64), ROWS))


def make_init(path: Path) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from population_model import mlp

    torch.manual_seed(0)
    torch.save(mlp((FEATURES,), CLASSES).state_dict(), path)


# --- the two jobs --------------------------------------------------------------------------------


def featherfl_cmd(npz: Path, init: Path, clients: int, out: Path, vectorize: str = "auto") -> list[str]:
    return [
        sys.executable, "-m", "featherfl", "run", "--algorithm", "fedavg", "--dataset", "npz", "--clients", str(clients), "--rounds", str(ROUNDS),
        "--model", "population_model:mlp", "--out", str(out), "--quiet",
        "--set", f"data.dir={npz}", "--set", "partition.name=natural", "--set", f"engine.cohort={COHORT}", "--set", f"model.init={init}",
        "--set", f"fedavg.lr={LR}", "--set", "fedavg.momentum=0", "--set", f"fedavg.batch_size={BATCH}", "--set", "fedavg.local_epochs=1",
        "--set", "fedavg.weighting=uniform", "--set", f"eval.every={ROUNDS}", "--set", "log.plots=false", "--set", "engine.threads=1",
        "--set", f"engine.vectorize={vectorize}",
    ]


PFL_JOB = r'''
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
npz, init, out = sys.argv[1], sys.argv[2], sys.argv[3]
from pfl.aggregate.simulate import SimulatedBackend
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
from pfl.data.dataset import Dataset
from pfl.data.federated_dataset import FederatedDataset
from pfl.data.sampling import get_user_sampler
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
from pfl.metrics import Weighted
from pfl.model.pytorch import PyTorchModel

z = np.load(npz)
x, y, tx, ty, owner = z["x_train"], z["y_train"], z["x_test"], z["y_test"], z["client_train"]
clients = int(owner.max()) + 1
starts = np.searchsorted(owner, np.arange(clients + 1))  # rows of one client are contiguous

class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    def forward(self, a):
        return self.net(a)
    def loss(self, a, b, eval=False):
        self.eval() if eval else self.train()
        return torch.nn.functional.cross_entropy(self(a), b.long())
    @torch.no_grad()
    def metrics(self, a, b, eval=True):
        out = self(a)
        n = len(b)
        return {"loss": Weighted(float(torch.nn.functional.cross_entropy(out, b.long(), reduction="sum")), n),
                "accuracy": Weighted(float((out.argmax(1) == b).sum()), n)}

torch.manual_seed(0); np.random.seed(0)
model = MLP()
model.net.load_state_dict(torch.load(init, weights_only=True))
users = list(range(clients))
data = FederatedDataset(lambda u: Dataset((x[starts[u]:starts[u + 1]], y[starts[u]:starts[u + 1]]), user_id=str(u)), get_user_sampler("random", users))
pmodel = PyTorchModel(model=model, local_optimizer_create=torch.optim.SGD, central_optimizer=torch.optim.SGD(model.parameters(), lr=1.0))
backend = SimulatedBackend(training_data=data, val_data=None)
t0 = time.perf_counter()
FederatedAveraging().run(
    algorithm_params=NNAlgorithmParams(central_num_iterations=ROUNDS, evaluation_frequency=ROUNDS, train_cohort_size=COHORT, val_cohort_size=0),
    backend=backend, model=pmodel,
    model_train_params=NNTrainHyperParams(local_num_epochs=1, local_learning_rate=LR, local_batch_size=BATCH),
    model_eval_params=NNEvalHyperParams(local_batch_size=10000))
seconds = time.perf_counter() - t0
with torch.no_grad():
    acc = float((model(torch.from_numpy(tx)).argmax(1) == torch.from_numpy(ty)).float().mean())
json.dump({"seconds": seconds, "accuracy": acc}, open(out, "w"))
'''.replace("ROUNDS", str(ROUNDS)).replace("COHORT", str(COHORT)).replace("LR", str(LR)).replace("BATCH", str(BATCH))


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit status) of one whole process pinned to core 0.

    The peak comes from ``wait4``. Linux starts a child's peak at its parent's size when it
    forks, so this process imports neither numpy nor torch and makes data in children: its own
    size (about 20 MB) is then the floor of every figure, far below what is measured."""
    t = time.perf_counter()
    with open(os.devnull, "wb") as null:
        p = subprocess.Popen(["taskset", "-c", "0", *cmd], cwd=cwd, env=env, stdout=null, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(p.pid, 0)
        err = p.stderr.read().decode(errors="replace")
        p.stderr.close()
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(f"  exit {code}: {' '.join(cmd[:4])} ...\n{err[-1500:]}", file=sys.stderr)
    return wall, usage.ru_maxrss / 1024, code


# --- pfl's own environment -------------------------------------------------------------------------


def ensure_pfl(venv: Path) -> tuple[Path | None, str]:
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import pfl, torch; print(pfl.__version__ if hasattr(pfl, '__version__') else '0.6.0', torch.__version__)"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py, subprocess.run(probe, capture_output=True, text=True).stdout.strip()
    steps = [[sys.executable, "-m", "venv", str(venv)], [str(py), "-m", "pip", "install", "-q", "torch==2.13.0"], [str(py), "-m", "pip", "install", "-q", "pfl==0.6.0"]]
    for s in steps:
        r = subprocess.run(s, capture_output=True, text=True)
        if r.returncode != 0:
            return None, f"`{' '.join(s[-3:])}` failed: {(r.stderr or r.stdout).strip().splitlines()[-1] if (r.stderr or r.stdout).strip() else r.returncode}"
    r = subprocess.run(probe, capture_output=True, text=True)
    return (py, r.stdout.strip()) if r.returncode == 0 else (None, f"pfl does not import: {r.stderr.strip().splitlines()[-1]}")


# --- the side-by-side runs ------------------------------------------------------------------------


def compare(clients: int, pairs: int, work: Path, pfl_py: Path | None, vectorize_off: bool) -> dict:
    npz, init = work / f"pop{clients}.npz", work / "init.pt"
    if not npz.exists() or not init.exists():  # in a child: this process stays small (see timed)
        subprocess.run([sys.executable, __file__, "--make", str(npz), str(init), str(clients)], check=True, env={**os.environ, **ENV})
    env = {**os.environ, **ENV, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}"}
    job = work / "pfl_job.py"
    job.write_text(PFL_JOB)
    res: dict = {"fl": [], "pfl": [], "fl_off": []}
    for i in range(pairs):
        order = ["fl", "pfl"] if i % 2 == 0 else ["pfl", "fl"]
        if vectorize_off:
            order.append("fl_off")
        for who in order:
            out = work / f"run-{who}-{clients}-{i}"
            if who == "pfl":
                if pfl_py is None:
                    continue
                js = work / f"pfl-{clients}-{i}.json"
                wall, rss, code = timed([str(pfl_py), str(job), str(npz), str(init), str(js)], work, {**os.environ, **ENV})
                if code == 0:
                    r = json.loads(js.read_text())
                    res["pfl"].append({"wall": wall, "rss": rss, "per_round": r["seconds"] / ROUNDS, "accuracy": r["accuracy"]})
            else:
                subprocess.run(["rm", "-rf", str(out)])
                wall, rss, code = timed(featherfl_cmd(npz, init, clients, out, "off" if who == "fl_off" else "auto"), ROOT, env)
                if code == 0:
                    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
                    res[who].append({"wall": wall, "rss": rss, "per_round": sum(r["seconds"] for r in rows) / len(rows), "accuracy": rows[-1]["accuracy"]})
            print(f"  {clients:>7,} {who:6} pair {i}: {res[who][-1] if res[who] else 'failed'}", flush=True)
    res["npz_mb"] = npz.stat().st_size / 2**20
    res["train_mb"] = clients * ROWS * FEATURES * 4 / 2**20
    return res


def _med(rows: list[dict], key: str) -> float | None:
    return statistics.median(r[key] for r in rows) if rows else None


def _spread(rows: list[dict], key: str) -> str:
    return f"{min(r[key] for r in rows):.3g}-{max(r[key] for r in rows):.3g}" if len(rows) > 1 else "-"


# --- partitioning and the state store at 10^5 clients --------------------------------------------


def partition_times() -> list[tuple[str, float]]:
    r = subprocess.run([sys.executable, __file__, "--partition-times"], capture_output=True, text=True, env={**os.environ, **ENV})
    if r.returncode != 0:
        print(r.stderr[-1500:], file=sys.stderr)
        return []
    return [tuple(x) for x in json.loads(r.stdout.strip().splitlines()[-1])]


def _partition_times(clients: int = 100_000, rows: int = ROWS) -> list[tuple[str, float]]:
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from featherfl.data import partition as P

    rng = np.random.default_rng(0)
    labels = rng.integers(0, CLASSES, clients * rows)
    groups = np.repeat(rng.permutation(clients), rows)
    jobs = [
        ("natural", lambda: P.natural(groups, clients)),
        ("iid", lambda: P.iid(labels, clients, 0)),
        ("dirichlet(0.5), min 10", lambda: P.dirichlet(labels, clients, 0.5, 0, 10)),
        ("shards (2 per client)", lambda: P.shards(labels, clients, 2, 0)),
        ("quantity-skew(0.5), min 10", lambda: P.quantity_skew(labels, clients, 0.5, 0, 10)),
        ("power-law(1.5), min 10", lambda: P.power_law(labels, clients, 1.5, 0, 10)),
        ("label-deficient (T=3, R=5)", lambda: P.label_deficient(labels, clients, 0, 0, 3, 5)),
    ]
    out = []
    for name, fn in jobs:
        t = time.perf_counter()
        fn()
        out.append((name, time.perf_counter() - t))
        print(f"  partition {name}: {out[-1][1]:.2f} s", file=sys.stderr, flush=True)
    return out


STORE_JOB = r'''
import resource, sys, time
import numpy as np, torch
sys.path.insert(0, sys.argv[4])
from featherfl.engines.state_store import DiskStates
population, floats, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = DiskStates(folder, population)
rng = np.random.default_rng(0)
t = time.perf_counter()
rounds = 30
for r in range(rounds):
    for cid in rng.choice(population, size=50, replace=False):
        st = s.setdefault(int(cid), {})
        st["w"] = st.get("w", torch.zeros(floats)) + 1.0
    s.commit()
dt = time.perf_counter() - t
print(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f} {dt / rounds:.4f} {s.length / 2**20:.1f} {s.memory_bytes() / 2**20:.2f}")
'''


def store_rss(work: Path) -> list[tuple[int, float, float, float, float]]:
    """(population, peak RSS MB, s per round, file MB, index MB) of 30 rounds x 50 clients, 10^4 floats each."""
    job = work / "store_job.py"
    job.write_text(STORE_JOB)
    out = []
    for population in (1_000, 100_000):
        folder = Path(tempfile.mkdtemp(dir=work))
        r = subprocess.run([sys.executable, str(job), str(population), "10000", str(folder), str(ROOT)], capture_output=True, text=True, env={**os.environ, **ENV})
        subprocess.run(["rm", "-rf", str(folder)])
        if r.returncode != 0:
            print(r.stderr[-1000:], file=sys.stderr)
            continue
        rss, per_round, file_mb, index_mb = (float(v) for v in r.stdout.split())
        out.append((population, rss, per_round, file_mb, index_mb))
        print(f"  store {population:,}: {rss:.0f} MB peak, {per_round:.3f} s/round", flush=True)
    return out


# --- the report -------------------------------------------------------------------------------------


def main() -> None:
    if sys.argv[1:2] == ["--make"]:
        make_npz(Path(sys.argv[2]), int(sys.argv[4]))
        make_init(Path(sys.argv[3]))
        return
    if sys.argv[1:2] == ["--partition-times"]:
        print(json.dumps(_partition_times()))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--pairs", default="3,2,1", help="alternating pairs per size (one number, or one per size)")
    ap.add_argument("--work", default="/tmp/featherfl-population")
    ap.add_argument("--pfl-venv", default="/tmp/pflvenv")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "population.md"))
    ap.add_argument("--skip-extras", action="store_true", help="no partition or state-store timings")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    pairs = [int(p) for p in a.pairs.split(",")]
    pairs = pairs + [pairs[-1]] * (len(sizes) - len(pairs))
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    pfl_py, pfl_note = ensure_pfl(Path(a.pfl_venv))
    print(f"pfl: {pfl_note}", flush=True)
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    results = {}
    for n, k in zip(sizes, pairs):
        results[n] = compare(n, k, work, pfl_py, vectorize_off=(n == sizes[0]))
    parts = [] if a.skip_extras else partition_times()
    store = [] if a.skip_extras else store_rss(work)
    versions = subprocess.run([sys.executable, "-c", "import numpy, torch; print(torch.__version__, numpy.__version__)"], capture_output=True, text=True).stdout.split()
    lines = [
        "# Cross-device at population scale: featherfl vs pfl-research",
        "",
        f"Written by `benchmarks/population.py` in {time.perf_counter() - t0:.0f} s. This machine has 2 CPU cores shared with other work while these",
        "figures were taken: absolute seconds are loaded ones; the ratios, measured side by side in alternating pairs, are what to read.",
        "",
        f"Load average (1, 5, 15 min) at the start: {', '.join(f'{v:.1f}' for v in load_before)}; at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}.",
        "",
        f"Command: `.venv/bin/python benchmarks/population.py --sizes {a.sizes} --pairs {a.pairs}`",
        "",
        f"Versions: Python {platform.python_version()}, torch {versions[0]}, numpy {versions[1]}; pfl: {pfl_note if pfl_py else 'not run'} (its own venv {a.pfl_venv}).",
        "",
        f"Job: FedAvg, {ROWS} rows per client of a synthetic 64-feature 10-class npz (one file for both), MLP 64-64-10 from the same initial weights,",
        f"SGD lr {LR} (no momentum), batch {BATCH}, 1 local epoch, {COHORT} clients per round, {ROUNDS} rounds, accuracy on the same {TEST_ROWS:,} test rows.",
        "Each job is a whole process pinned to one core (`taskset -c 0`). featherfl: `featherfl run` (`engine.vectorize=auto` unless said),",
        "clients by `partition.name=natural`, cohort by `engine.cohort`; pfl: `FederatedAveraging` over a `FederatedDataset` whose users are",
        "slices of the same arrays, `SimulatedBackend`, `random` user sampler. The two samplers draw different cohorts, so accuracies agree",
        "only up to that.",
        "",
        "| clients | pairs | featherfl wall s | pfl wall s | wall ratio (fl/pfl) | fl s/round | pfl s/round | in-process ratio | fl peak RSS MB | pfl peak RSS MB | fl accuracy | pfl accuracy |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in results.items():
        fl, pf = r["fl"], r["pfl"]
        if not fl:
            lines.append(f"| {n:,} | - | featherfl failed | | | | | | | | | |")
            continue
        if pf:
            ratios = [f["wall"] / p["wall"] for f, p in zip(fl, pf)]
            iratios = [f["per_round"] / p["per_round"] for f, p in zip(fl, pf)]
            lines.append(
                f"| {n:,} | {len(ratios)} | {_med(fl, 'wall'):.2f} ({_spread(fl, 'wall')}) | {_med(pf, 'wall'):.2f} ({_spread(pf, 'wall')}) | **{statistics.median(ratios):.2f}** |"
                f" {_med(fl, 'per_round'):.4f} | {_med(pf, 'per_round'):.4f} | **{statistics.median(iratios):.2f}** | {_med(fl, 'rss'):.0f} | {_med(pf, 'rss'):.0f} |"
                f" {fl[-1]['accuracy']:.4f} | {pf[-1]['accuracy']:.4f} |"
            )
        else:
            lines.append(f"| {n:,} | {len(fl)} | {_med(fl, 'wall'):.2f} | (pfl not run) | | {_med(fl, 'per_round'):.4f} | | | {_med(fl, 'rss'):.0f} | | {fl[-1]['accuracy']:.4f} | |")
    first = results[sizes[0]]
    if first["fl_off"] and first["pfl"]:
        ratios = [f["wall"] / p["wall"] for f, p in zip(first["fl_off"], first["pfl"])]
        lines += ["", f"`engine.vectorize=off` at {sizes[0]:,} clients: whole-process wall {_med(first['fl_off'], 'wall'):.2f} s, ratio to pfl **{statistics.median(ratios):.2f}**, "
                  f"{_med(first['fl_off'], 'per_round'):.4f} s per round, accuracy {first['fl_off'][-1]['accuracy']:.4f}."]
    lines += ["", "featherfl maps the npz (uncompressed) instead of reading it, and lets go of the pages its finite-values check read; what stays"
              " resident is what the rounds gather, so its peak RSS can sit below the training array; pfl's `np.load` reads every array.",
              "", "Training array (float32) and npz per population: " + ", ".join(f"{n:,}: {r['train_mb']:.0f} MB ({r['npz_mb']:.0f} MB file)" for n, r in results.items()) + "."]
    if parts:
        lines += ["", "## Partitioning 100,000 clients x 60 rows (6,000,000 labels), in process", "", "| partitioner | seconds |", "|---|---:|"]
        lines += [f"| {name} | {s:.2f} |" for name, s in parts]
    if store:
        lines += [
            "",
            "## Client-state store: 10,000 floats per client, 30 rounds x 50 clients",
            "",
            "`featherfl.engines.state_store.DiskStates` (`engine.client_state = disk`, the default above 1,000 clients), each round touching",
            "50 random clients' states and committing them as a checkpoint does. Held in memory instead, 100,000 such states would be",
            f"{100_000 * 10_000 * 4 / 2**30:.1f} GiB in RAM and again in every checkpoint.",
            "",
            "| population | peak RSS MB | s per round (commit included) | file MB after 30 rounds | index in RAM MB |",
            "|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {p:,} | {rss:.0f} | {s:.3f} | {f:.0f} | {i:.2f} |" for p, rss, s, f, i in store]
    import resource

    lines += ["", f"Peak RSS comes from `wait4` on each job; the process that starts them peaked at {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, the floor of any figure (a child's peak starts at its parent's size)."]
    if pfl_py is None:
        lines += ["", f"pfl was not run: {pfl_note}"]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
