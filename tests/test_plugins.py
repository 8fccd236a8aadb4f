"""A user's model and data by dotted path, without editing featherfl; bad paths are one-line errors."""

import json

import pytest

from featherfl import cli

PLUGIN = '''
import numpy as np
from torch import nn


def build(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 16), nn.ReLU(), nn.Linear(16, num_classes))


def not_a_model(input_shape, num_classes):
    return "nope"


def load():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 6)) * 3
    y = rng.integers(0, 3, size=300)
    x = (centers[y] + rng.normal(size=(300, 6))).astype(np.float32)
    return x[:240], y[:240], x[240:], y[240:]


def load_mismatched():
    x = np.zeros((10, 6), dtype=np.float32)
    return x, np.zeros(8, dtype=np.int64), x, np.zeros(10, dtype=np.int64)
'''


@pytest.fixture()
def plugin(tmp_path, monkeypatch):
    (tmp_path / "my_fl_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_fl_plugin"


def _run(tmp_path, *sets):
    argv = ["run", "--rounds", "4", "--clients", "3", "--out", str(tmp_path / "run"), "--quiet", "--set", "engine.threads=1", "--set", "partition.name=iid"]
    for s in sets:
        argv += ["--set", s]
    return cli.main(argv)


def test_model_and_dataset_by_dotted_path(tmp_path, plugin):
    assert _run(tmp_path, f"model.name={plugin}:build", f"dataset={plugin}:load") == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model"] == f"{plugin}:build" and summary["final_accuracy"] > 0.8
    assert summary["model_parameters"] == 6 * 16 + 16 + 16 * 3 + 3
    # the path is recorded, so the run resumes from its own folder
    assert cli.main(["run", "--resume", "--out", str(tmp_path / "run"), "--rounds", "5", "--quiet"]) == 0


@pytest.mark.parametrize(
    "setting, needle",
    [
        ("model.name=no_such_module_xyz:build", "cannot import"),
        ("model.name={p}:missing", "has no attribute"),
        ("model.name={p}:not_a_model", "expected a torch.nn.Module"),
        ("dataset={p}:load_mismatched", "must match"),
    ],
)
def test_bad_plugins_are_one_line_errors(tmp_path, plugin, capsys, setting, needle):
    assert _run(tmp_path, setting.format(p=plugin)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "run").exists()


def test_algorithm_by_dotted_path(tmp_path, monkeypatch, capsys):
    """The FedProx of docs/architecture.md as a plug-in: no registry edit, its keys settable, resumable."""
    import re
    from pathlib import Path

    from featherfl.algorithms import registry

    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))  # what this test registers goes away after it
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    (tmp_path / "my_prox.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    argv = ["run", "--algorithm", "my_prox:FedProx", "--rounds", "2", "--clients", "3", "--out", str(out), "--quiet",
            "--set", "engine.threads=1", "--set", "fedprox.mu=0.5", "--set", "fedprox.local_epochs=1"]
    assert cli.main(argv) == 0
    assert json.loads((out / "summary.json").read_text())["final_accuracy"] > 0.3
    assert cli.main(["run", "--resume", "--out", str(out), "--rounds", "3", "--quiet"]) == 0
    assert cli.main(["run", "--algorithm", "my_prox:ProxClient", "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "not a featherfl Algorithm subclass" in capsys.readouterr().err
