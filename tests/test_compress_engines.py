"""Compressed runs give the same rows on Ray as on the local engine (residuals in Ray-held client
state included), with client sampling and dropout so a residual waits out rounds it is not sampled in."""

import json

import pytest

ray = pytest.importorskip("ray")

from featherfl.schema import build_config  # noqa: E402
from featherfl.experiment import Experiment, prepare  # noqa: E402
from support.rows import metric_rows

SMALL = [("rounds", 3), ("clients", 4), ("data.max_train", 320), ("data.max_test", 200), ("engine.threads", 1), ("engine.vectorize", "off"), ("engine.fraction", 0.75), ("engine.dropout", 0.2)]


#: every test here starts or shares a local Ray session (seconds each): `pytest -m "not slow"` skips them
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("compress_engines")]

@pytest.fixture(scope="module", autouse=True)
def ray_session():
    import torch

    threads = torch.get_num_threads()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()
    torch.set_num_threads(threads)


@pytest.mark.parametrize("sets", [[("compress.method", "topk"), ("compress.ratio", 0.02)], [("compress.method", "powersgd"), ("compress.rank", 1)], [("compress.method", "qsgd"), ("compress.downlink", "same")]])
def test_ray_equals_local(tmp_path, sets):
    rows = {}
    for engine in ("local", "ray"):
        cfg = build_config(overrides=SMALL + sets + [("engine.name", engine)])
        Experiment(prepare(cfg), tmp_path / engine, progress=False).run()
        rows[engine] = metric_rows(tmp_path / engine / "metrics.jsonl")
    assert rows["ray"] == rows["local"]
    assert rows["local"][-1]["bytes_up"] > 0
