"""Cross-device at population scale: featherfl against pfl-research (``pfl`` 0.6.0) and Flower 1.41's ``run_simulation``.

    .venv/bin/python benchmarks/population.py                     # writes benchmarks/results/population.md
    .venv/bin/python benchmarks/population.py --sizes 1000 --cohorts 50 --pairs 1 --no-cnn --no-flower --no-fd --skip-extras --out /tmp/pop.md

The same job for every simulator: FedAvg on one npz (a ``client_train`` column says which client
owns each row, so all of them see the same clients), the same model from the same initial weights
(``benchmarks/population_model.py``), SGD without momentum, 1 local epoch, ``ROUNDS`` rounds, uniform
averaging of the clients' models (pfl's default weight of a user's update is 1; featherfl
``fedavg.weighting=uniform``; Flower's FedAvg is given ``num-examples = 1``). Two jobs:

- **MLP**: the MLP 64-64-10 on a synthetic 64-feature 10-class npz of 10^3, 10^4 and 10^5 clients whose
  rows per client follow a power law (featherfl's ``partition.name=power-law`` sizes: Pareto tail index
  1.5, at least 10 rows, 60 rows per client on average) and whose labels are skewed per client (a
  Dirichlet(1) mix each); lr 0.1, batch 10; cohorts of 50 and 500.
- **CNN**: a small CNN on 1x28x28 inputs, the MNIST test set in ``../shared/data`` split 8,000/2,000
  (stratified, seed 0) with the 8,000 training images split into 1,000 writers by the same power law
  (at least 2 images each); lr 0.05, batch 10; cohort 50.

Each job is a whole process pinned to one core (``taskset -c 0``); the simulators run in
alternating order and the table gives medians (this 2-core machine may be shared with other work,
so the ratios measured side by side are what to read). Reported: whole-process wall time,
in-process seconds per round (featherfl: the rounds' own ``seconds`` in ``metrics.jsonl``;
pfl: the time inside ``FederatedAveraging.run``; Flower: the time inside ``FedAvg.start``), peak RSS
(``wait4``), accuracy on the same test rows. Besides: FD at 10^3 and 10^5 clients (featherfl only: peak
RSS against the population), partitioning 100,000 clients x 60 rows, and the client-state store at
100,000 clients x 10,000 floats of state each (RAM against the population).

pfl is installed by this script in a virtual environment of its own (``--pfl-venv``, default
/tmp/pflvenv): torch 2.13.0 first (the CPU build, so no CUDA build is pulled), then pfl 0.6.0. It is
never a dependency of featherfl. Flower runs from featherfl's own environment (``flwr==1.41.0``, the
``flower`` extra) on its Ray simulation backend with one CPU; a Flower job that does not finish within
``--flower-timeout`` seconds (default 600) is reported as such.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist-t10k"  # --data-dir changes it
ROWS, FEATURES, CLASSES, TEST_ROWS = 60, 64, 10, 10_000
ROUNDS = int(os.environ.get("POPULATION_ROUNDS", "30"))
POWER, MIN_ROWS, CNN_MIN_ROWS, WRITERS = 1.5, 10, 2, 1_000
ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Job:
    model: str  # "mlp" (synthetic rows) or "cnn" (MNIST writers)
    clients: int
    cohort: int
    lr: float
    batch: int = 10
    algorithm: str = "fedavg"
    rounds: int = ROUNDS

    @property
    def data_name(self) -> str:
        return f"mnist-writers{self.clients}.npz" if self.model == "cnn" else f"pop{self.clients}-power.npz"

    @property
    def label(self) -> str:
        return f"{self.model.upper()} {self.clients:,} / {self.cohort}"


# --- data and initial weights ------------------------------------------------------------------


def power_sizes(clients: int, mean_rows: int, min_rows: int, seed: int = 0):
    """Rows per client as featherfl's ``partition.name=power-law`` gives them for ``clients x mean_rows`` rows."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from featherfl.data.partition import power_law

    return np.array([len(p) for p in power_law(np.zeros(clients * mean_rows, dtype=np.int64), clients, POWER, seed, min_rows)])


def make_synthetic(path: Path, clients: int, seed: int = 0, fixed: bool = False) -> None:
    """Gaussian class clusters, noisy enough that 30 rounds land well below 100 %; rows of one client
    are contiguous, their number follows the power law (``fixed``: ``ROWS`` each) and their labels
    are skewed (a Dirichlet(1) mix per client), as devices' data are."""
    import numpy as np

    sizes = np.full(clients, ROWS) if fixed else power_sizes(clients, ROWS, MIN_ROWS, seed)
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, (CLASSES, FEATURES)).astype(np.float32)
    cum = np.cumsum(rng.dirichlet(np.ones(CLASSES), size=clients), axis=1)
    owner = np.repeat(np.arange(clients, dtype=np.int64), sizes)
    n = len(owner)
    y = np.empty(n, dtype=np.int64)
    x = np.empty((n, FEATURES), dtype=np.float32)
    for i in range(0, n, 1_000_000):  # in blocks: no float64 temporary of the whole array
        o = owner[i : i + 1_000_000]
        yy = (rng.random((len(o), 1)) > cum[o]).sum(axis=1).clip(0, CLASSES - 1)
        y[i : i + len(o)] = yy
        x[i : i + len(o)] = centers[yy] + rng.normal(0.0, 3.2, (len(o), FEATURES)).astype(np.float32)
    ty = rng.integers(0, CLASSES, TEST_ROWS)
    tx = (centers[ty] + rng.normal(0.0, 3.2, (TEST_ROWS, FEATURES))).astype(np.float32)
    np.savez(path, x_train=x, y_train=y, x_test=tx, y_test=ty.astype(np.int64), client_train=owner)


def make_npz(path: Path, clients: int, seed: int = 0) -> None:
    """``ROWS`` rows per client: the equal-clients job of ``benchmarks/cores.py`` and ``round_profile.py``."""
    make_synthetic(path, clients, seed, fixed=True)


def fixed_rows_cmd(npz: Path, init: Path, clients: int, out: Path) -> list[str]:
    """``featherfl run`` of the MLP job at cohort 50 over an npz of :func:`make_npz`."""
    return featherfl_cmd(Job("mlp", clients, 50, 0.1), npz, init, out)


def _idx(path: Path):
    import numpy as np

    raw = gzip.open(path, "rb").read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def make_mnist_writers(path: Path, mnist: Path, writers: int = WRITERS, seed: int = 0) -> None:
    """The MNIST test set split 8,000/2,000 (stratified), the 8,000 training images into ``writers``
    clients of power-law sizes (featherfl's power-law partitioner, at least 2 images each), rows of
    one client contiguous; pixels scaled to [0, 1] and normalised with MNIST's mean and std."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from featherfl.data.partition import power_law

    images, labels = _idx(mnist / "t10k-images-idx3-ubyte.gz"), _idx(mnist / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[: int(round(0.2 * (labels == c).sum()))] for c in range(CLASSES)])
    train = np.setdiff1d(np.arange(len(labels)), test)
    parts = power_law(labels[train], writers, POWER, seed, CNN_MIN_ROWS)
    order = train[np.concatenate(parts)]
    owner = np.repeat(np.arange(writers, dtype=np.int64), [len(p) for p in parts])

    def norm(a):
        return ((a.astype(np.float32) / 255.0 - 0.1307) / 0.3081)[:, None, :, :]

    np.savez(path, x_train=norm(images[order]), y_train=labels[order], x_test=norm(images[np.sort(test)]), y_test=labels[np.sort(test)], client_train=owner)


def make_init(path: Path, model: str = "mlp", shape: tuple[int, ...] = (FEATURES,)) -> None:
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import population_model

    torch.manual_seed(0)
    torch.save(getattr(population_model, model)(shape, CLASSES).state_dict(), path)


# --- the jobs -------------------------------------------------------------------------------------


def featherfl_cmd(job: Job, npz: Path, init: Path, out: Path, vectorize: str = "auto", seed: int = 0) -> list[str]:
    a = job.algorithm
    cmd = [
        sys.executable, "-m", "featherfl", "run", "--algorithm", a, "--dataset", "npz", "--clients", str(job.clients), "--rounds", str(job.rounds),
        "--model", f"population_model:{job.model}", "--out", str(out), "--quiet",
        "--set", f"data.dir={npz}", "--set", "partition.name=natural", "--set", f"engine.cohort={job.cohort}", "--set", f"model.init={init}",
        "--set", f"eval.every={job.rounds}", "--set", "log.plots=false", "--set", "engine.threads=1", "--set", f"engine.vectorize={vectorize}", "--set", f"seed={seed}",
    ]
    if a == "fedavg":
        cmd += ["--set", f"fedavg.lr={job.lr}", "--set", "fedavg.momentum=0", "--set", f"fedavg.batch_size={job.batch}", "--set", "fedavg.local_epochs=1",
                "--set", "fedavg.weighting=uniform"]
    else:  # fd: short local work, so the figure is about the population, not the training
        cmd += ["--set", "fd.local_steps=5", "--set", f"fd.batch_size={job.batch}"]
    return cmd


PFL_JOB = r'''
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
npz, init, out, models, model_name = sys.argv[1:6]
rounds, cohort, lr, batch = int(sys.argv[6]), int(sys.argv[7]), float(sys.argv[8]), int(sys.argv[9])
seed = int(sys.argv[10]) if len(sys.argv) > 10 else 0
sys.path.insert(0, models)
import population_model
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

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = getattr(population_model, model_name)(x.shape[1:], 10)
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

torch.manual_seed(seed); np.random.seed(seed)
model = Net()
model.net.load_state_dict(torch.load(init, weights_only=True))
users = list(range(clients))
if len(sys.argv) > 11:
    # another simulator's draws, in order: [client, its rows in the order that simulator's local epoch
    # takes them] per client per round, so pfl trains the same clients on the same batches
    import itertools
    draws = [(int(u), np.asarray(rows, dtype=np.int64)) for u, rows in json.load(open(sys.argv[11]))]
    keys = itertools.cycle(range(len(draws)))
    sampler = lambda: next(keys)
    def make(k):
        u, rows = draws[k]
        return Dataset((x[starts[u]:starts[u + 1]][rows], y[starts[u]:starts[u + 1]][rows]), user_id=str(u))
else:
    sampler = get_user_sampler("random", users)
    make = lambda u: Dataset((x[starts[u]:starts[u + 1]], y[starts[u]:starts[u + 1]]), user_id=str(u))
data = FederatedDataset(make, sampler)
pmodel = PyTorchModel(model=model, local_optimizer_create=torch.optim.SGD, central_optimizer=torch.optim.SGD(model.parameters(), lr=1.0))
backend = SimulatedBackend(training_data=data, val_data=None)
t0 = time.perf_counter()
FederatedAveraging().run(
    algorithm_params=NNAlgorithmParams(central_num_iterations=rounds, evaluation_frequency=rounds, train_cohort_size=cohort, val_cohort_size=0),
    backend=backend, model=pmodel,
    model_train_params=NNTrainHyperParams(local_num_epochs=1, local_learning_rate=lr, local_batch_size=batch),
    model_eval_params=NNEvalHyperParams(local_batch_size=10000))
seconds = time.perf_counter() - t0
with torch.no_grad():
    acc = float((model(torch.from_numpy(tx)).argmax(1) == torch.from_numpy(ty)).float().mean())
json.dump({"seconds": seconds, "accuracy": acc}, open(out, "w"))
'''

FLOWER_JOB = r'''
"""FedAvg written the way Flower's examples write it (Message API, built-in FedAvg strategy, ArrayRecord
of the state dict), run by flwr.simulation.run_simulation with one SuperNode per client."""
import json, logging, sys, time
import numpy as np, torch
torch.set_num_threads(1)
npz, init, out, models, model_name = sys.argv[1:6]
rounds, cohort, lr, batch = int(sys.argv[6]), int(sys.argv[7]), float(sys.argv[8]), int(sys.argv[9])
sys.path.insert(0, models)
import population_model
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

z = np.load(npz)
owner = z["client_train"]
clients = int(owner.max()) + 1
shape = z["x_train"].shape[1:]
DATA = {}


def client_rows(u):
    if not DATA:  # once per simulation worker process
        d = np.load(npz)
        DATA.update(x=d["x_train"], y=d["y_train"], starts=np.searchsorted(d["client_train"], np.arange(clients + 1)))
    s, e = DATA["starts"][u], DATA["starts"][u + 1]
    return torch.from_numpy(DATA["x"][s:e]), torch.from_numpy(DATA["y"][s:e])


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context):
    x, y = client_rows(context.node_config["partition-id"])
    net = getattr(population_model, model_name)(shape, 10)
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    perm = torch.randperm(len(y))
    for i in range(0, len(y), batch):
        idx = perm[i : i + batch]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    # num-examples = 1: uniform averaging, as the other simulators do
    return Message(content=RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    net = getattr(population_model, model_name)(shape, 10)
    net.load_state_dict(torch.load(init, weights_only=True))
    strategy = FedAvg(fraction_train=cohort / clients, fraction_evaluate=0.0, min_train_nodes=cohort, min_evaluate_nodes=0, min_available_nodes=clients)
    t0 = time.perf_counter()

    def progress(server_round, arrays):  # Flower calls it after each round: a run cut off still says how far it got
        json.dump({"rounds": server_round, "seconds": time.perf_counter() - t0}, open(out + ".progress", "w"))
        return None

    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(net.state_dict()), num_rounds=rounds, evaluate_fn=progress)
    seconds = time.perf_counter() - t0
    net.load_state_dict(result.arrays.to_torch_state_dict())
    with torch.no_grad():
        acc = float((net(torch.from_numpy(z["x_test"])).argmax(1) == torch.from_numpy(z["y_test"])).float().mean())
    json.dump({"seconds": seconds, "accuracy": acc}, open(out, "w"))


run_simulation(server_app, client_app, num_supernodes=clients, verbose_logging=False,
               backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 1, "include_dashboard": False, "logging_level": logging.ERROR}})
'''


def timed(cmd: list[str], cwd: Path, env: dict, timeout: float | None = None) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit status) of one whole process pinned to core 0 (its children:
    Ray's workers for Flower, counted in the peak only through ``wait4`` of the process itself).

    The peak comes from ``wait4``. Linux starts a child's peak at its parent's size when it
    forks, so this process imports neither numpy nor torch and makes data in children: its own
    size (about 20 MB) is then the floor of every figure, far below what is measured. A job past
    ``timeout`` is killed with its process group (exit status 124)."""
    t = time.perf_counter()
    with open(os.devnull, "wb") as null, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(["taskset", "-c", "0", *cmd], cwd=cwd, env=env, stdout=null, stderr=err, start_new_session=True)
        deadline = None if timeout is None else t + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                os.killpg(p.pid, 9)
                _, status, usage = os.wait4(p.pid, 0)
                p.returncode = 124
                return time.perf_counter() - t, usage.ru_maxrss / 1024, 124
            time.sleep(0.02)
        p.returncode = os.waitstatus_to_exitcode(status)
        try:
            os.killpg(p.pid, 9)  # what the job left running (Ray's processes)
        except ProcessLookupError:
            pass
        err.seek(0)
        text = err.read().decode(errors="replace")
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(f"  exit {code}: {' '.join(cmd[:4])} ...\n{text[-1500:]}", file=sys.stderr)
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


def prepare_data(job: Job, work: Path) -> tuple[Path, Path]:
    npz, init = work / job.data_name, work / f"init-{job.model}.pt"
    if not npz.exists() or not init.exists():  # in a child: this process stays small (see timed)
        subprocess.run([sys.executable, __file__, "--make", job.model, str(npz), str(init), str(job.clients), str(MNIST)], check=True, env={**os.environ, **ENV})
    return npz, init


def compare(job: Job, pairs: int, work: Path, pfl_py: Path | None, extra: tuple[str, ...] = (), flower_timeout: float = 600) -> dict:
    """Alternating runs of featherfl and pfl (and the ``extra`` ones: ``fl_off``, ``flower``) on one job."""
    npz, init = prepare_data(job, work)
    env = {**os.environ, **ENV, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}"}
    scripts = {"pfl": work / "pfl_job.py", "flower": work / "flower_job.py"}
    scripts["pfl"].write_text(PFL_JOB)
    scripts["flower"].write_text(FLOWER_JOB)
    res: dict = {"fl": [], "pfl": [], "fl_off": [], "flower": [], "flower_note": ""}
    for i in range(pairs):
        order = ["fl", "pfl"] if i % 2 == 0 else ["pfl", "fl"]
        order += [e for e in extra if not (e == "flower" and i > 0)]  # Flower once: minutes per run
        for who in order:
            out = work / f"run-{who}-{job.model}-{job.clients}-{job.cohort}-{i}"
            if who in ("pfl", "flower"):
                py = pfl_py if who == "pfl" else Path(sys.executable)
                if py is None:
                    continue
                js = out.with_suffix(".json")
                js.unlink(missing_ok=True)
                args = [str(py), str(scripts[who]), str(npz), str(init), str(js), str(ROOT / "benchmarks"), job.model, str(job.rounds), str(job.cohort), str(job.lr), str(job.batch)]
                wall, rss, code = timed(args, work, {**os.environ, **ENV}, timeout=flower_timeout if who == "flower" else None)
                if code == 0 and js.exists():
                    r = json.loads(js.read_text())
                    res[who].append({"wall": wall, "rss": rss, "per_round": r["seconds"] / job.rounds, "accuracy": r["accuracy"]})
                elif who == "flower":
                    res["flower_note"] = f"did not finish within {flower_timeout:.0f} s" if code == 124 else f"failed (exit {code})"
                    prog = Path(str(js) + ".progress")
                    if prog.exists():
                        p = json.loads(prog.read_text())
                        if p["rounds"] > 0:
                            res["flower_partial"] = {"rounds": p["rounds"], "per_round": p["seconds"] / p["rounds"]}
                            res["flower_note"] += f" ({p['rounds']} of {job.rounds} rounds done, {p['seconds'] / p['rounds']:.2f} s per round)"
            else:
                subprocess.run(["rm", "-rf", str(out)])
                wall, rss, code = timed(featherfl_cmd(job, npz, init, out, "off" if who == "fl_off" else "auto"), ROOT, env)
                if code == 0:
                    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
                    res[who].append({"wall": wall, "rss": rss, "per_round": sum(r["seconds"] for r in rows) / len(rows), "accuracy": rows[-1]["accuracy"]})
            print(f"  {job.label:>20} {who:6} pair {i}: {res[who][-1] if res[who] else 'failed'}", flush=True)
    res["npz_mb"] = npz.stat().st_size / 2**20
    return res


def draw_orders(job: Job, npz: Path, seed: int, cohorts: list[list[int]]) -> list:
    """[client, its rows in featherfl's order] for every client of every round, round by round: the
    order FedAvg's one local epoch takes a client's rows in (``featherfl.seeding.generator`` of the
    run's seed, the round and the client, as ``FedAvg.update`` draws it); rows are the client's own,
    counted from its first row in the npz (``partition.name=natural`` keeps the stored order)."""
    import numpy as np
    import torch

    from featherfl.seeding import generator

    with np.load(npz) as z:
        owner = z["client_train"]
    sizes = np.bincount(owner, minlength=job.clients)
    if job.batch <= 0:
        raise ValueError("draw_orders: a batch size is needed")
    return [[c, torch.randperm(int(sizes[c]), generator=generator(seed, "fedavg-client", rnd, c)).tolist()] for rnd, cohort in enumerate(cohorts, start=1) for c in cohort]


def accuracy_seeds(job: Job, seeds: int, work: Path, pfl_py: Path | None) -> dict:
    """Final accuracy of featherfl and pfl over ``seeds`` seeds each (0..seeds-1: featherfl's ``seed``,
    pfl's torch and numpy seeds), not timed: the two samplers draw different cohorts, so one run of
    each differs by the spread of cohort draws; the means over seeds are what to compare.

    Each seed also runs pfl on featherfl's own draws: the clients of each round (read from the run's
    metrics rows) with each client's rows in the order featherfl's local epoch takes them (its
    seeded generator, :func:`draw_orders`), fed to pfl as its user sampler and datasets. The two
    then run the same local steps on the same batches from the same weights, and only float
    rounding differs; ``paired`` holds those (featherfl, pfl) accuracies seed by seed."""
    npz, init = prepare_data(job, work)
    env = {**os.environ, **ENV, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}"}
    (work / "pfl_job.py").write_text(PFL_JOB)
    out: dict = {"fl": [], "pfl": [], "paired": []}
    for seed in range(seeds):
        run = work / f"acc-fl-{job.model}-{job.clients}-{job.cohort}-{seed}"
        subprocess.run(["rm", "-rf", str(run)])
        fl = None
        if subprocess.run(featherfl_cmd(job, npz, init, run, seed=seed), cwd=ROOT, env=env, capture_output=True).returncode == 0:
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            fl = rows[-1]["accuracy"]
            out["fl"].append(fl)
        if pfl_py is not None:
            js = work / f"acc-pfl-{job.model}-{job.clients}-{job.cohort}-{seed}.json"
            args = [str(pfl_py), str(work / "pfl_job.py"), str(npz), str(init), str(js), str(ROOT / "benchmarks"), job.model, str(job.rounds), str(job.cohort), str(job.lr), str(job.batch), str(seed)]
            if subprocess.run(args, cwd=work, env={**os.environ, **ENV}, capture_output=True).returncode == 0:
                out["pfl"].append(json.loads(js.read_text())["accuracy"])
            if fl is not None:
                cohorts = work / f"cohorts-{job.model}-{job.clients}-{job.cohort}-{seed}.json"
                cohorts.write_text(json.dumps(draw_orders(job, npz, seed, [sorted(int(c) for c in r["bytes_down_per_client"]) for r in rows])))
                paired = work / f"acc-pfl-paired-{job.model}-{job.clients}-{job.cohort}-{seed}.json"
                if subprocess.run(args[:4] + [str(paired)] + args[5:] + [str(cohorts)], cwd=work, env={**os.environ, **ENV}, capture_output=True).returncode == 0:
                    out["paired"].append((fl, json.loads(paired.read_text())["accuracy"]))
        print(f"  accuracy {job.label} seed {seed}: fl {out['fl'][-1:]} pfl {out['pfl'][-1:]} paired {out['paired'][-1:]}", flush=True)
    return out


def fd_population(work: Path, sizes: list[int], cohort: int = 50, rounds: int = 5) -> list[dict]:
    """FD (a method with per-client state: each device keeps its own model) at each population, featherfl only."""
    env = {**os.environ, **ENV, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'benchmarks'}"}
    out = []
    for n in sizes:
        job = Job("mlp", n, cohort, 0.1, algorithm="fd", rounds=rounds)
        npz, init = prepare_data(job, work)
        run = work / f"run-fd-{n}"
        subprocess.run(["rm", "-rf", str(run)])
        wall, rss, code = timed(featherfl_cmd(job, npz, init, run), ROOT, env)
        if code != 0:
            out.append({"clients": n, "failed": code})
            continue
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        store = sum(f.stat().st_size for f in run.rglob("*") if f.is_file() and "state" in f.name)
        out.append({"clients": n, "wall": wall, "rss": rss, "per_round": sum(r["seconds"] for r in rows) / len(rows), "accuracy": rows[-1].get("accuracy"),
                    "train_mb": _train_mb(npz), "state_mb": store / 2**20})
        print(f"  FD {n:,}: {out[-1]}", flush=True)
    return out


def _train_mb(npz: Path) -> float:
    """Size of the float32 training array inside ``npz`` (read from its header, not loaded)."""
    import zipfile

    with zipfile.ZipFile(npz) as z:
        return z.getinfo("x_train.npy").file_size / 2**20


def _med(rows: list[dict], key: str) -> float | None:
    return statistics.median(r[key] for r in rows) if rows else None


def _spread(rows: list[dict], key: str) -> str:
    return f"{min(r[key] for r in rows):.3g}-{max(r[key] for r in rows):.3g}" if len(rows) > 1 else "-"

# --- partitioning and the state store at 10^5 clients --------------------------------------------


def partition_times(clients: int = 100_000, rows: int = ROWS) -> list[tuple[str, float]]:
    """Each partitioner's seconds on ``clients x rows`` labels, one call in a fresh process each
    (``benchmarks/partition_speed.py --one``: the data made before the clock starts), as a run
    partitions once; [] where one fails."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from partition_speed import jobs as partition_jobs  # the same data and partitioner settings, one definition

    names = [name for name, _ in partition_jobs(10, 1)]
    out = []
    for i, name in enumerate(names):
        r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "partition_speed.py"), "--one", str(i), "--clients", str(clients), "--rows", str(rows)],
                           capture_output=True, text=True, env={**os.environ, **ENV})
        if r.returncode != 0:
            print(f"partition {name} failed: {r.stderr[-1500:]}", file=sys.stderr)
            return []
        out.append((name, float(r.stdout.strip().splitlines()[-1])))
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


def _row(job: Job, r: dict) -> str:
    fl, pf, fw = r["fl"], r["pfl"], r["flower"]
    if not fl:
        return f"| {job.label} | - | featherfl failed | | | | | | | | | |"
    cells = [job.label, str(len(fl)), f"{_med(fl, 'wall'):.2f} ({_spread(fl, 'wall')})"]
    if pf:
        ratios = [f["wall"] / p["wall"] for f, p in zip(fl, pf)]
        iratios = [f["per_round"] / p["per_round"] for f, p in zip(fl, pf)]
        cells += [f"{_med(pf, 'wall'):.2f} ({_spread(pf, 'wall')})", f"**{statistics.median(ratios):.2f}**", f"{_med(fl, 'per_round'):.4f}", f"{_med(pf, 'per_round'):.4f}",
                  f"**{statistics.median(iratios):.2f}**", f"{_med(fl, 'rss'):.0f}", f"{_med(pf, 'rss'):.0f}", f"{fl[-1]['accuracy']:.4f}", f"{pf[-1]['accuracy']:.4f}"]
    else:
        cells += ["(pfl not run)", "", f"{_med(fl, 'per_round'):.4f}", "", "", f"{_med(fl, 'rss'):.0f}", "", f"{fl[-1]['accuracy']:.4f}", ""]
    return "| " + " | ".join(cells) + " |"


def _cores_figures(path: Path) -> tuple[float, float] | None:
    """(two processes' speedup per round, the median two-core capacity of the batched products)
    from ``benchmarks/cores.py``'s table, or None where it is missing or unreadable."""
    try:
        text = path.read_text()
    except OSError:
        return None
    speed = re.search(r"^\| 2 cores, 2 processes \|[^|]*\|[^|]*\| \*\*([0-9.]+)\*\*", text, re.M)
    cap = re.search(r"batched products the training is made of.*?\(median ([0-9.]+)\)", text.replace("\n", " "))
    return (float(speed.group(1)), float(cap.group(1))) if speed and cap else None


def goals(results: list, acc: list, fd: list, parts: list, work: Path, cores_md: Path) -> list[str]:
    """The issue's goals against this run's figures (and cores.py's last table for the two cores):
    each row's verdict is computed from the figure beside it."""
    rows = []

    def add(goal: str, figure: str, met: bool | None) -> None:
        rows.append(f"| {goal} | {figure} | {'met' if met else ('**not met**' if met is False else 'not measured')} |")

    def ratio(r: dict, key: str) -> float | None:
        return statistics.median(f[key] / q[key] for f, q in zip(r["fl"], r["pfl"])) if r["fl"] and r["pfl"] else None

    at = {(j.model, j.clients, j.cohort): r for j, r in results}
    small = [(j, r) for j, r in results if j.clients == 1_000 or j.model == "cnn"]
    for key, goal, limit in (("wall", "1,000 clients: whole process <= 0.40 of pfl", 0.40), ("per_round", "1,000 clients: in process <= 0.20 of pfl", 0.20)):
        figs = [(j, ratio(r, key)) for j, r in small]
        figs = [(j, x) for j, x in figs if x is not None]
        if figs:
            add(goal, "; ".join(f"{j.label} {x:.2f}" for j, x in figs), all(x <= limit for _, x in figs))
    first = results[0][1] if results else None
    if first and first["fl_off"] and first["pfl"]:
        x = statistics.median(f["wall"] / q["wall"] for f, q in zip(first["fl_off"], first["pfl"]))
        add("1,000 clients: `vectorize=off` <= 1.0 of pfl", f"{x:.2f}", x <= 1.0)
    tens = [(j, r) for j, r in results if j.model == "mlp" and j.clients == 10_000 and r["fl"] and r["pfl"]]
    if tens:
        walls = [ratio(r, "wall") for _, r in tens]
        rss = [(_med(r["fl"], "rss"), _med(r["pfl"], "rss")) for _, r in tens]
        add("10,000 clients: wall <= 0.5 of pfl, peak RSS <= pfl's", "; ".join(f"{j.label} {w:.2f}, {a:.0f} / {b:.0f} MB" for (j, _), w, (a, b) in zip(tens, walls, rss)),
            all(w <= 0.5 for w in walls) and all(a <= b for a, b in rss))
    big = [(j, r) for j, r in results if j.model == "mlp" and j.clients == 100_000]
    if big:
        limit = 1.3 * _train_mb(work / big[0][0].data_name) + (FEATURES * 64 + 64 + 64 * CLASSES + CLASSES) * 4 / 2**20
        ok = all(r["fl"] for _, r in big)
        add(f"100,000 clients: runs, peak RSS <= 1.3 x the training array plus the model ({limit:,.0f} MB)",
            "; ".join(f"{j.label} {_med(r['fl'], 'rss'):,.0f} MB" if r["fl"] else f"{j.label} failed" for j, r in big), ok and all(_med(r["fl"], "rss") <= limit for _, r in big))
    if parts:
        worst = max(parts, key=lambda t: t[1])
        add("partitioning 100,000 x 60 rows <= 1 s each", f"{min(s for _, s in parts):.2f}-{worst[1]:.2f} s (slowest: {worst[0]})", worst[1] <= 1.0)
    ok = [f for f in fd if "failed" not in f]
    if len(ok) == 2:
        d_rss, d_data = ok[1]["rss"] - ok[0]["rss"], ok[1]["train_mb"] - ok[0]["train_mb"]
        add("FD at 100,000 clients: RAM flat in the population (peak RSS grows by less than the data)", f"+{d_rss:.0f} MB against +{d_data:,.0f} MB of data", d_rss < d_data)
    paired = [(j, r["paired"]) for j, r in acc if r.get("paired")]
    if paired:
        figs = []
        for j, pr in paired:
            mean = statistics.mean(x for x, _ in pr) - statistics.mean(y for _, y in pr)
            figs.append((j, mean, max((x - y for x, y in pr), key=abs)))
        add("accuracy within 0.005 of pfl on each shared job (pfl replaying featherfl's cohorts, the same seeds)",
            "; ".join(f"{j.label} {m:+.4f} (means), {w:+.4f} (largest seed)" for j, m, w in figs), all(abs(m) <= 0.005 for _, m, _ in figs))
    cores = _cores_figures(cores_md)
    add("two cores >= 1.7x one (cohort 500, the same rows), from `benchmarks/results/cores.md`",
        f"{cores[0]:.2f}x, against a measured two-core capacity of {cores[1]:.2f} for the batched products the training is made of" if cores else "no readable cores.md",
        None if cores is None else cores[0] >= 1.7)
    if not rows:
        return []
    return ["", "## The goals against these figures", "", "| goal | figure | |", "|---|---|---|"] + rows


def main() -> None:
    global MNIST
    if sys.argv[1:2] == ["--make"]:
        model, npz, init, clients = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
        if model == "cnn":
            make_mnist_writers(npz, Path(sys.argv[6]), clients)
            make_init(init, "cnn", (1, 28, 28))
        else:
            make_synthetic(npz, clients)
            make_init(init, "mlp", (FEATURES,))
        return
    if sys.argv[1:2] == ["--make-fixed"]:  # cores.py's data, made in a child process
        make_npz(Path(sys.argv[2]), int(sys.argv[4]))
        make_init(Path(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="populations of the MLP job")
    ap.add_argument("--cohorts", default="50,500", help="clients per round of the MLP job")
    ap.add_argument("--pairs", default="3,2,1", help="alternating pairs per population (one number, or one per population)")
    ap.add_argument("--no-cnn", action="store_true", help="skip the CNN job on MNIST writers")
    ap.add_argument("--no-flower", action="store_true", help="skip Flower's run_simulation (run once on the first MLP job and on the CNN job)")
    ap.add_argument("--flower-timeout", type=float, default=600.0)
    ap.add_argument("--no-fd", action="store_true", help="skip FD at 10^3 and 10^5 clients")
    ap.add_argument("--seeds", type=int, default=5, help="seeds for the accuracy comparison of the 1,000-client cohort-50 jobs (0 = none)")
    ap.add_argument("--data-dir", default=str(MNIST.parent), help="the folder holding mnist-t10k/ (default ../shared/data)")
    ap.add_argument("--work", default="/tmp/featherfl-population")
    ap.add_argument("--pfl-venv", default="/tmp/pflvenv")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "population.md"))
    ap.add_argument("--skip-extras", action="store_true", help="no partition or state-store timings")
    a = ap.parse_args()
    MNIST = Path(a.data_dir) / "mnist-t10k"
    sizes = [int(s) for s in a.sizes.split(",")]
    cohorts = [int(c) for c in a.cohorts.split(",")]
    pairs = [int(p) for p in a.pairs.split(",")]
    pairs = pairs + [pairs[-1]] * (len(sizes) - len(pairs))
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    pfl_py, pfl_note = ensure_pfl(Path(a.pfl_venv))
    print(f"pfl: {pfl_note}", flush=True)
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    results: list[tuple[Job, dict]] = []
    for n, k in zip(sizes, pairs):
        for c in cohorts:
            if c > n:
                continue
            job = Job("mlp", n, c, 0.1)
            first = not results
            extra = (("fl_off",) if first else ()) + (("flower",) if first and not a.no_flower else ())
            results.append((job, compare(job, k, work, pfl_py, extra, a.flower_timeout)))
    if not a.no_cnn:
        if (MNIST / "t10k-images-idx3-ubyte.gz").exists():
            job = Job("cnn", WRITERS, 50, 0.05)
            results.append((job, compare(job, pairs[0], work, pfl_py, () if a.no_flower else ("flower",), a.flower_timeout)))
        else:
            print(f"no MNIST under {MNIST}: CNN job skipped", flush=True)
    acc = [(job, accuracy_seeds(job, a.seeds, work, pfl_py)) for job, _ in results if a.seeds and job.clients == WRITERS and job.cohort == 50]
    fd = [] if a.no_fd else fd_population(work, sorted({sizes[0], sizes[-1]}))
    parts = [] if a.skip_extras else partition_times()
    store = [] if a.skip_extras else store_rss(work)
    versions = subprocess.run([sys.executable, "-c", "import numpy, torch, flwr; print(torch.__version__, numpy.__version__, flwr.__version__)"], capture_output=True, text=True).stdout.split()
    command = f".venv/bin/python benchmarks/population.py --sizes {a.sizes} --cohorts {a.cohorts} --pairs {a.pairs} --seeds {a.seeds}" + "".join(
        f" --{k}" for k, v in (("no-cnn", a.no_cnn), ("no-flower", a.no_flower), ("no-fd", a.no_fd), ("skip-extras", a.skip_extras)) if v)
    lines = [
        "# Cross-device at population scale: featherfl vs pfl-research and Flower",
        "",
        f"Written by `benchmarks/population.py` in {time.perf_counter() - t0:.0f} s on a 2-core machine; the ratios, measured side by side in",
        "alternating runs, are what to read.",
        "",
        f"Load average (1, 5, 15 min) at the start: {', '.join(f'{v:.1f}' for v in load_before)}; at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}.",
        "",
        f"Command: `{command}`",
        "",
        f"Versions: Python {platform.python_version()}, torch {versions[0]}, numpy {versions[1]}, flwr {versions[2] if len(versions) > 2 else '?'};"
        f" pfl: {pfl_note if pfl_py else 'not run'} (its own venv {a.pfl_venv}).",
        "",
        f"Jobs: FedAvg, {ROUNDS} rounds, SGD without momentum, 1 local epoch, batch 10, uniform averaging, the same initial weights and npz for every",
        f"simulator. MLP: 64-64-10 on synthetic 64-feature rows, power-law rows per client (tail index {POWER}, at least {MIN_ROWS}, {ROWS} on average:",
        "10^5 clients hold 6,000,000 rows), labels skewed per client, lr 0.1, accuracy on the same 10,000 test rows. CNN: two 5x5 convolutions",
        f"and one linear layer (5,994 parameters) on MNIST's test set split 8,000/2,000, the 8,000 into {WRITERS:,} power-law writers (at least",
        f"{CNN_MIN_ROWS}), lr 0.05. Each job is a whole process pinned to one core (`taskset -c 0`). featherfl: `featherfl run` (`engine.vectorize=auto`",
        "unless said), clients by `partition.name=natural`, cohort by `engine.cohort`; pfl: `FederatedAveraging` over a `FederatedDataset` whose",
        "users are slices of the same arrays, `SimulatedBackend`, `random` user sampler. The simulators draw different cohorts, so accuracies agree",
        "only up to that.",
        "",
        "| job (model clients / cohort) | runs | featherfl wall s | pfl wall s | wall ratio (fl/pfl) | fl s/round | pfl s/round | in-process ratio | fl peak RSS MB | pfl peak RSS MB | fl accuracy | pfl accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_row(job, r) for job, r in results]
    sizes_seen = {}
    for job, r in results:
        if job.model == "mlp":
            sizes_seen[job.clients] = r["npz_mb"]
    first_job, first = results[0] if results else (None, None)
    if first and first["fl_off"] and first["pfl"]:
        ratios = [f["wall"] / p["wall"] for f, p in zip(first["fl_off"], first["pfl"])]
        lines += ["", f"`engine.vectorize=off` on {first_job.label}: whole-process wall {_med(first['fl_off'], 'wall'):.2f} s, ratio to pfl **{statistics.median(ratios):.2f}**, "
                  f"{_med(first['fl_off'], 'per_round'):.4f} s per round, accuracy {first['fl_off'][-1]['accuracy']:.4f}."]
    flower_rows = [(job, r) for job, r in results if r["flower"] or r["flower_note"]]
    if flower_rows:
        lines += ["", "## Flower 1.41 `run_simulation`, the same jobs", "",
                  "A conventional Flower app (Message API, built-in `FedAvg`, `ArrayRecord` of the state dict, a torch training loop in the",
                  "ClientApp), one SuperNode per client, Ray backend with one CPU, one run each; peak RSS is the driver process's only (Ray's workers",
                  "are other processes).", "",
                  "| job | Flower wall s | featherfl / Flower wall | Flower s/round | featherfl / Flower per round | Flower driver peak RSS MB | Flower accuracy |", "|---|---:|---:|---:|---:|---:|---:|"]
        for job, r in flower_rows:
            if r["flower"]:
                f = r["flower"][0]
                lines.append(f"| {job.label} | {f['wall']:.1f} | **{_med(r['fl'], 'wall') / f['wall']:.3f}** | {f['per_round']:.3f} | **{_med(r['fl'], 'per_round') / f['per_round']:.3f}** | {f['rss']:.0f} | {f['accuracy']:.4f} |")
            elif r.get("flower_partial"):
                pr = r["flower_partial"]["per_round"]
                lines.append(f"| {job.label} | {r['flower_note']} | | {pr:.3f} | **{_med(r['fl'], 'per_round') / pr:.3f}** | | |")
            else:
                lines.append(f"| {job.label} | {r['flower_note']} | | | | | |")
    lines += ["", "featherfl maps the npz (uncompressed) instead of reading it, and lets go of the pages its finite-values check read; what stays"
              " resident is what the rounds gather, so its peak RSS can sit below the training array; pfl's `np.load` reads every array.",
              "", "npz file per MLP population: " + ", ".join(f"{n:,}: {mb:.0f} MB" for n, mb in sizes_seen.items()) + "."]
    if acc:
        lines += ["", f"## Accuracy over seeds", "",
                  "The timed runs above use seed 0 for both; one run of each differs by the spread of the cohorts the two samplers draw.",
                  f"Final accuracy over seeds 0-{a.seeds - 1} (featherfl `seed`; pfl's torch and numpy seeds), not timed:", "",
                  "| job | featherfl mean (min-max) | pfl mean (min-max) | difference of means |", "|---|---:|---:|---:|"]
        for job, r in acc:
            if r["fl"] and r["pfl"]:
                fm, pm = statistics.mean(r["fl"]), statistics.mean(r["pfl"])
                lines.append(f"| {job.label} | {fm:.4f} ({min(r['fl']):.4f}-{max(r['fl']):.4f}) | {pm:.4f} ({min(r['pfl']):.4f}-{max(r['pfl']):.4f}) | {fm - pm:+.4f} |")
        if any(r.get("paired") for _, r in acc):
            lines += ["", "The same seeds with pfl replaying featherfl's draws: its user sampler gives the clients each featherfl run",
                      "sampled, round by round (from that run's metrics rows), and each client's rows come in the order featherfl's",
                      "local epoch took them (its seeded generator; pfl takes a client's rows as they come). The same clients,",
                      "batches, model, initial weights and optimiser: only float rounding differs.", "",
                      "| job | seeds | featherfl mean | pfl mean, same cohorts | difference of means | largest difference of one seed |",
                      "|---|---:|---:|---:|---:|---:|"]
            for job, r in acc:
                if r.get("paired"):
                    f_, p_ = [a for a, _ in r["paired"]], [b for _, b in r["paired"]]
                    worst = max((a - b for a, b in r["paired"]), key=abs)
                    lines.append(f"| {job.label} | {len(f_)} | {statistics.mean(f_):.4f} | {statistics.mean(p_):.4f} | {statistics.mean(f_) - statistics.mean(p_):+.4f} | {worst:+.4f} |")
    if fd:
        lines += ["", "## FD, a method with per-client state, against the population (featherfl only)", "",
                  "FD keeps a model per device between rounds (`engine.client_state`: in memory up to 1,000 clients, on disk above). Same MLP",
                  "npz as above, cohort 50, 5 rounds, `fd.local_steps=5`. Goal: peak RSS at 10^5 clients above 10^3 by less than the data.", "",
                  "| clients | wall s | s/round | peak RSS MB | training array MB | state on disk MB | accuracy |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for f in fd:
            if "failed" in f:
                lines.append(f"| {f['clients']:,} | failed (exit {f['failed']}) | | | | | |")
            else:
                lines.append(f"| {f['clients']:,} | {f['wall']:.1f} | {f['per_round']:.3f} | {f['rss']:.0f} | {f['train_mb']:.0f} | {f['state_mb']:.1f} | {f['accuracy']:.4f} |")
        ok = [f for f in fd if "failed" not in f]
        if len(ok) == 2:
            d_rss, d_data = ok[1]["rss"] - ok[0]["rss"], ok[1]["train_mb"] - ok[0]["train_mb"]
            lines += ["", f"Peak RSS grew by {d_rss:.0f} MB from {ok[0]['clients']:,} to {ok[1]['clients']:,} clients, against {d_data:.0f} MB more data: "
                      + ("**flat in the population** (less than the data)." if d_rss < d_data else "**not** below the data.")]
    if parts:
        lines += ["", "## Partitioning 100,000 clients x 60 rows (6,000,000 labels), one call in a fresh process each", "", "| partitioner | seconds |", "|---|---:|"]
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
    try:
        lines += goals(results, acc, fd, parts, work, ROOT / "benchmarks" / "results" / "cores.md")
    except Exception as e:  # the tables above are measured: a fault in the summary must not lose them
        lines += ["", f"(The goals table could not be written: {e.__class__.__name__}: {e})"]
    import resource

    lines += ["", f"Peak RSS comes from `wait4` on each job; the process that starts them peaked at {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, the floor of any figure (a child's peak starts at its parent's size)."]
    if pfl_py is None:
        lines += ["", f"pfl was not run: {pfl_note}"]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
