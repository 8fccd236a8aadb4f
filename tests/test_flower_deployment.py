"""Loopback deployment: a real flower-superlink and two flower-supernode processes on
127.0.0.1 (free ports), ``flwr run`` of the featherfl app, compared with the local engine.

Bytes must match exactly (the same ``wire.encode`` payloads cross the network);
accuracy and loss within ``TOL`` (the same arithmetic runs in another process;
they are expected to be identical, the tolerance only absorbs a different torch
thread count on a node). All runs are submitted at once: a Flower round trip is
mostly the SuperNodes' polling interval, so concurrent runs overlap it. Every
process is stopped by its id when the module ends, also on failure; Flower's files
(FLWR_HOME, installed app bundles) and the run folders stay in pytest's tmp dir.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("flower_deployment")]  # minutes, not seconds: `pytest -m "not slow"` skips it while iterating
if not (Path(sys.executable).with_name("flower-superlink").exists() or shutil.which("flower-superlink")):
    pytest.skip("flower-superlink is not installed", allow_module_level=True)

from featherfl import algorithms  # noqa: E402
from featherfl.config import parse_set_args  # noqa: E402
from featherfl.schema import build_config  # noqa: E402
from featherfl.experiment import run_experiment  # noqa: E402
from support.local_federation import LocalFederation  # noqa: E402
from support.rows import metric_rows  # noqa: E402

TOL = 1e-6
METHODS = ["fedavg", "baffle", "fd"]
#: eval.every=2: evaluate after round 2 only, one message less per node; engine.vectorize=off: the
#: nodes train one client each, so the local reference runs them one by one too
SMALL = "data.max_train=320 data.max_test=200 eval.every=2 engine.threads=1 engine.vectorize=off"
FAST = {"baffle": "baffle.k=20", "fd": "fd.local_steps=20"}


def _run_config(method, out):
    return {"algorithm": method, "rounds": 2, "clients": 2, "seed": 0, "set": f"{SMALL} {FAST.get(method, '')}".strip(), "out": str(out), "node-wait": 60.0, "reply-timeout": 120.0}


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()  # the local reference runs set engine.threads=1 process-wide
    fed = LocalFederation(tmp_path_factory.mktemp("flower"), nodes=2)
    with fed:
        yield fed
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def submitted(federation):
    outs = {}
    for m in METHODS:
        if m in algorithms.REGISTRY:
            outs[m] = federation.submit(_run_config(m, federation.workdir / f"run-{m}"))
    return outs


@pytest.mark.parametrize("method", METHODS)
def test_flower_deployment_matches_local_engine(method, federation, submitted, tmp_path):
    if method not in algorithms.REGISTRY:
        pytest.skip(f"{method} is not registered yet")
    rc = _run_config(method, tmp_path / "local")
    cfg = build_config(overrides=[(k, rc[k]) for k in ("algorithm", "rounds", "clients", "seed")] + parse_set_args(rc["set"].split()))
    local_out, local = run_experiment(cfg, tmp_path / "local")
    remote = federation.wait(submitted[method], timeout=240)
    assert remote["rounds_completed"] == 2 and not remote.get("stopped")
    a, b = metric_rows(submitted[method] / "metrics.jsonl"), metric_rows(local_out / "metrics.jsonl")
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        for key in ("bytes_up", "bytes_down", "bytes_by_category", "bytes_up_per_client", "bytes_down_per_client", "clients_ok", "clients_dropped", "clients_rejected"):
            assert ra[key] == rb[key], key  # the ledger: exactly the local engine's bytes
        assert ra["accuracy"] == pytest.approx(rb["accuracy"], abs=TOL)
        assert ra["loss"] == pytest.approx(rb["loss"], abs=TOL)
    assert remote["bytes_up"] == local["bytes_up"] > 0


def test_too_few_nodes_ends_round_after_deadline(tmp_path):
    """No SuperNode at all: the round ends after node-wait with the quorum message, never an endless wait."""
    rc = dict(_run_config("fedavg", tmp_path / "run"), **{"node-wait": 2.0})
    rc["set"] += " engine.on_quorum_fail=stop"
    with LocalFederation(tmp_path, nodes=0) as fed:
        s = fed.run(rc, timeout=120)
    assert s["rounds_completed"] == 0
    assert "fewer than engine.min_replies" in s["stopped"]
