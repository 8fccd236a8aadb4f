"""Secure aggregation on every engine: Ray and a loopback Flower deployment give the local
engine's results and bytes (the masks cancel exactly, so random keys change nothing)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from featherfl.config import parse_set_args  # noqa: E402
from featherfl.schema import build_config  # noqa: E402
from featherfl.experiment import Experiment, prepare, run_experiment  # noqa: E402
from support.rows import metric_rows

pytestmark = pytest.mark.xdist_group("secagg_engines")  # its module fixture is costly: one test process runs the whole file

#: engine.vectorize=off: Ray and Flower run clients one by one, so the local reference does too
#: (the batched path agrees within float rounding, not bit for bit)
SMALL = [("rounds", 2), ("clients", 4), ("data.max_train", 320), ("data.max_test", 200), ("engine.threads", 1), ("secagg.protocol", "secagg+"), ("engine.vectorize", "off")]
METHODS = {"fedavg": [("algorithm", "fedavg"), ("fedavg.weighting", "samples"), ("fedavg.local_epochs", 1)], "fd": [("algorithm", "fd"), ("fd.local_steps", 20)]}


def _run(tmp_path, name, overrides):
    cfg = build_config(overrides=SMALL + overrides)
    summary = Experiment(prepare(cfg), tmp_path / name, progress=False).run()
    return metric_rows(tmp_path / name / "metrics.jsonl"), summary


@pytest.fixture(scope="module")
def ray_session():
    """One small local Ray session for both methods (Ray's start-up is the expensive part)."""
    ray = pytest.importorskip("ray")
    import torch

    threads = torch.get_num_threads()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_ray_engine_runs_secagg_like_the_local_engine(tmp_path, method, ray_session):
    extra = METHODS[method] + [("engine.dropout", 0.2)]
    local, s_local = _run(tmp_path, "local", extra)
    remote, s_ray = _run(tmp_path, "ray", extra + [("engine.name", "ray")])
    assert remote == local  # accuracy, the ledger (secagg bytes included), drops, protocol counts
    assert s_ray["final_accuracy"] == s_local["final_accuracy"]
    assert any(r["bytes_by_category"].get("up_secagg") for r in remote)


@pytest.mark.slow
def test_flower_deployment_runs_secagg_like_the_local_engine(tmp_path):
    """Three SuperNodes on 127.0.0.1 (secure aggregation needs three clients), FedAvg with secagg+."""
    if not (Path(sys.executable).with_name("flower-superlink").exists() or shutil.which("flower-superlink")):
        pytest.skip("flower-superlink is not installed")
    import torch

    from support.local_federation import LocalFederation

    sets = "data.max_train=300 data.max_test=200 eval.every=2 engine.threads=1 engine.vectorize=off secagg.protocol=secagg+ fedavg.weighting=samples fedavg.local_epochs=1"
    rc = {"algorithm": "fedavg", "rounds": 2, "clients": 3, "seed": 0, "set": sets, "out": str(tmp_path / "flower-run"), "node-wait": 60.0, "reply-timeout": 120.0}
    threads = torch.get_num_threads()
    try:
        with LocalFederation(tmp_path / "flower", nodes=3) as fed:
            remote = fed.run(rc, timeout=300)
        cfg = build_config(overrides=[(k, rc[k]) for k in ("algorithm", "rounds", "clients", "seed")] + parse_set_args(sets.split()))
        local_out, local = run_experiment(cfg, tmp_path / "local")
    finally:
        torch.set_num_threads(threads)
    assert remote["rounds_completed"] == 2 and not remote.get("stopped")
    a, b = metric_rows(Path(rc["out"]) / "metrics.jsonl"), metric_rows(local_out / "metrics.jsonl")
    for ra, rb in zip(a, b):
        for key in ("bytes_up", "bytes_down", "bytes_by_category", "clients_ok", "secagg_masked_inputs", "secagg_revealed"):
            assert ra[key] == rb[key], key
        assert ra["aggregated"] and ra["accuracy"] == pytest.approx(rb["accuracy"], abs=1e-6)
    assert remote["final_accuracy"] == pytest.approx(local["final_accuracy"], abs=1e-6)
