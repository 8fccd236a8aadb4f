"""The Python API: a run from a dict, a user's own nn.Module factory and arrays, read back with load_run."""

import numpy as np
import pytest
import torch
from torch import nn

import featherfl
from featherfl.config import ConfigError

FAST = {"rounds": 2, "clients": 3, "engine": {"threads": 1}, "fedavg": {"max_steps": 3}}


def test_run_from_a_dict_returns_the_curve_and_bytes(tmp_path):
    r = featherfl.run(FAST, out=tmp_path / "run")
    assert r.status == "completed" and len(r.accuracy) == 2 and r.final_accuracy == r.accuracy[-1]
    assert r.bytes_up > 0 and r.bytes_down > 0
    again = featherfl.load_run(tmp_path / "run")
    assert again.summary == r.summary and again.metrics == r.metrics


def test_overrides_and_refusals(tmp_path):
    r = featherfl.run(FAST, out=tmp_path / "a", fedavg__lr=0.1)
    assert "lr = 0.1" in (tmp_path / "a" / "config.toml").read_text()
    with pytest.raises(ConfigError, match="already holds"):
        featherfl.run(FAST, out=tmp_path / "a")
    assert featherfl.run(FAST, out=tmp_path / "a", overwrite=True).status == "completed"
    with pytest.raises(ConfigError, match="unknown config key"):
        featherfl.run({"fedavg": {"lrr": 1}}, out=tmp_path / "b")
    assert r.final_accuracy is not None


def test_own_model_and_own_arrays(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 5)) * 3
    y = rng.integers(0, 3, size=400)
    x = (centers[y] + rng.normal(size=(400, 5))).astype(np.float32)
    built = []

    def tiny(input_shape, num_classes):
        built.append((input_shape, num_classes))
        return nn.Sequential(nn.Linear(input_shape[0], 16), nn.ReLU(), nn.Linear(16, num_classes))

    r = featherfl.run({**FAST, "rounds": 5, "partition": {"name": "iid"}}, out=tmp_path / "own", model=tiny, dataset=(x[:300], y[:300], x[300:], y[300:]))
    assert built and built[0] == ((5,), 3)
    assert r.final_accuracy > 0.8  # well-separated clusters: a real model learned them


def test_bad_model_or_data_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="expected a torch.nn.Module"):
        featherfl.run(FAST, out=tmp_path / "m", model=lambda shape, n: "not a model")
    x = np.zeros((10, 4), dtype=np.float32)
    with pytest.raises(ConfigError, match="must match"):
        featherfl.run(FAST, out=tmp_path / "d", dataset=(x, np.zeros(9, dtype=np.int64), x, np.zeros(10, dtype=np.int64)))
    assert not (tmp_path / "m").exists() and not (tmp_path / "d").exists()


def test_the_documented_example_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "python.md").read_text()
    code = re.findall(r"```python\n(.*?)```", doc, flags=re.S)[0]
    monkeypatch.chdir(tmp_path)  # the page writes under runs/python, relative to where it runs
    exec(compile(code, "docs/python.md", "exec"), {})
    assert (tmp_path / "runs" / "python" / "mine" / "summary.json").exists()
