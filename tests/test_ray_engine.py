"""The Ray engine runs the same rounds as the local engine: same metrics, same bytes.

One small local Ray session serves the whole module (Ray's start-up is the
expensive part); engines created inside it reuse it and must leave it running.
"""

import json

import pytest

ray = pytest.importorskip("ray")

from featherfl import algorithms  # noqa: E402
from featherfl.schema import build_config  # noqa: E402
from featherfl.engines.ray_engine import RayEngine  # noqa: E402
from featherfl.experiment import Experiment, prepare  # noqa: E402
from support.rows import metric_rows

METHODS = ["fedavg", "fedsgd", "baffle", "fd", "fedpeft"]
#: engine.vectorize=off: Ray runs clients one by one, so the local reference does too (batched
#: clients agree with it within float rounding only; tests/test_vectorized.py, test_fd_vectorized.py)
SMALL = [("rounds", 2), ("clients", 4), ("data.max_train", 320), ("data.max_test", 200), ("engine.threads", 1), ("engine.vectorize", "off")]
#: Per-method knobs that keep each run to a few seconds; ``baffle.downlink=replay`` makes
#: clients keep a model replica in their state, so state must survive between rounds.
FAST = {"baffle": [("baffle.k", 20), ("baffle.downlink", "replay")], "fd": [("fd.local_steps", 20)], "fedpeft": [("fedpeft.method", "bias"), ("partition.min_samples", 5)]}


#: every test here starts or shares a local Ray session (seconds each): `pytest -m "not slow"` skips them
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray_engine")]

@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """FedPEFT needs a pretrained backbone: a small ViT trained for one epoch on digits 0-4."""
    from featherfl.data.sources import load_dataset
    from featherfl.models.pretrain import pretrain, save_backbone

    ds = load_dataset(build_config())
    net, meta = pretrain(ds.train_x, ds.train_y, "vit-tiny", width=48, epochs=1)
    return str(save_backbone(net, meta, tmp_path_factory.mktemp("bb") / "vit.safetensors"))


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    import torch

    threads = torch.get_num_threads()  # engine.threads=1 below sets it process-wide; give it back after
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
    torch.set_num_threads(threads)


def _run(tmp_path, name, overrides):
    cfg = build_config(overrides=SMALL + overrides)
    exp = Experiment(prepare(cfg), tmp_path / name, progress=False)
    summary = exp.run()
    return metric_rows(tmp_path / name / "metrics.jsonl"), summary


def test_every_registered_method_is_compared():
    """A renamed or new method must not silently drop out of the Ray-vs-local comparison."""
    assert set(METHODS) == set(algorithms.REGISTRY)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_ray_equals_local(tmp_path, method, request):
    extra = [("algorithm", method), ("engine.fraction", 0.75), ("engine.dropout", 0.2)] + FAST.get(method, [])
    if method == "fedpeft":
        extra.append(("model.pretrained", request.getfixturevalue("backbone")))
    local, s_local = _run(tmp_path, "local", extra)
    remote, s_ray = _run(tmp_path, "ray", extra + [("engine.name", "ray")])
    assert remote == local  # accuracy, loss, per-client ledger bytes, drop/reject counts: all identical
    assert s_ray["bytes_up"] == s_local["bytes_up"] > 0
    assert s_ray["final_accuracy"] == s_local["final_accuracy"]


def test_engine_reuses_running_ray_and_pool_is_bounded(tmp_path):
    cfg = build_config(overrides=SMALL + [("engine.name", "ray"), ("engine.num_cpus", 8)])
    p = prepare(cfg)
    from featherfl import wire

    eng = RayEngine(cfg, p.algorithm, p.client_data, wire.Ledger(), p.ctx.run_id)
    try:
        assert len(eng.actors) == 2  # no more actors than the running cluster has CPUs
    finally:
        eng.close()
    assert ray.is_initialized()  # the engine did not start this session, so it must not end it


def test_failing_client_is_dropped_not_fatal(tmp_path):
    """A client whose update raises is counted as dropped ("error"); the round still aggregates."""
    cfg = build_config(overrides=SMALL + [("engine.name", "ray")])
    p = prepare(cfg)
    data = list(p.client_data)  # the population gathers a client's rows on demand: change a copy
    data[1].x = data[1].x.reshape(len(data[1].x), -1)[:, :5]  # inputs the model cannot take: its forward raises
    from featherfl import wire

    eng = RayEngine(cfg, p.algorithm, data, wire.Ledger(), p.ctx.run_id)
    try:
        stats = eng.run_round(1)
    finally:
        eng.close()
    assert stats.dropped_reasons.get("error") == 1
    assert stats.clients_ok == 3 and stats.aggregated


@pytest.mark.parametrize("method", ["fedavg", "fd"])
def test_batched_groups_give_the_same_rows_on_any_number_of_actors_or_workers(tmp_path, method):
    """engine.vectorize=auto: Ray actors train the local engine's fixed client groups (9 clients in
    groups of at most 4), so one actor, two actors, one local worker and two give identical rows."""
    extra = [("algorithm", method), ("engine.vectorize", "auto"), ("clients", 9), ("engine.group_clients", 4)] + FAST.get(method, [])
    runs = {
        "local-1": [("engine.workers", 1)],
        "local-2": [("engine.workers", 2)],
        "ray-1": [("engine.name", "ray"), ("engine.num_cpus", 1)],
        "ray-2": [("engine.name", "ray"), ("engine.num_cpus", 2)],
    }
    rows = {}
    for name, more in runs.items():
        exp = Experiment(prepare(build_config(overrides=SMALL + extra + more)), tmp_path / name, progress=False)
        engine = exp.engine
        exp.run()
        if name.startswith("ray"):
            assert engine._batchable and len(engine.actors) == 0  # batched groups were sent; the actors are gone after the run
        rows[name] = metric_rows(tmp_path / name / "metrics.jsonl")
    assert rows["local-1"][-1]["clients_ok"] == 9
    assert rows["ray-1"] == rows["ray-2"] == rows["local-1"] == rows["local-2"]
