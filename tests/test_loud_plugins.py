"""Class 1 of the hostile list: plug-ins that misbehave are one line and a non-zero exit,
never a silent exit 0, a wrong result or a bare traceback."""

import json

import pytest

from featherfl import cli
from support.registries import own_registries  # noqa: F401  (fixture)

PLUGIN = '''
import sys
import numpy as np
import torch
from torch import nn


def load():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=120)
    x = (rng.normal(size=(120, 4)) + y[:, None]).astype(np.float32)
    return x[:100], y[:100], x[100:], y[100:]


def seven(input_shape, num_classes):
    return nn.Linear(4, 7)


def three(input_shape, num_classes):
    return nn.Linear(4, 3)


def flat(input_shape, num_classes):
    return nn.Sequential(nn.Linear(4, 1), nn.Flatten(0))


class NoParams(nn.Module):
    def forward(self, x):
        return torch.zeros(len(x), 2)


def noparams(input_shape, num_classes):
    return NoParams()


def exits(input_shape, num_classes):
    sys.exit(0)


class Later(nn.Module):
    """Passes the set-up check (two rows), then raises in the server's evaluation."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        if not self.training and len(x) > 2:
            raise ValueError("boom in forward")
        return self.lin(x)


def later(input_shape, num_classes):
    return Later()


def good(input_shape, num_classes):
    return nn.Linear(4, num_classes)
'''


@pytest.fixture()
def plugin(tmp_path, monkeypatch, own_registries):
    (tmp_path / "loud_plugin.py").write_text(PLUGIN)
    (tmp_path / "loud_exit_on_import.py").write_text("import sys\nsys.exit(0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "loud_plugin"


def _run(tmp_path, *sets):
    argv = ["run", "--rounds", "2", "--clients", "2", "--out", str(tmp_path / "run"), "--quiet", "--set", "engine.threads=1", "--set", "partition.name=iid"]
    for s in sets:
        argv += ["--set", s]
    return cli.main(argv)


@pytest.mark.parametrize("setting", ["model.name=loud_exit_on_import:build", "dataset=loud_exit_on_import:load", "model.name={p}:exits"])
def test_sys_exit_in_a_plugin_is_one_line_exit_2(tmp_path, plugin, capsys, setting):
    assert _run(tmp_path, f"dataset={plugin}:load", setting.format(p=plugin)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SystemExit" in err[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "factory, needle",
    [("seven", "shaped (2, 7)"), ("three", "shaped (2, 3)"), ("flat", "shaped (2,)"), ("noparams", "no trainable parameters")],
)
def test_model_checked_at_setup(tmp_path, plugin, capsys, factory, needle):
    assert _run(tmp_path, f"dataset={plugin}:load", f"model.name={plugin}:{factory}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "run").exists()


def test_exception_in_a_run_is_a_failed_run(tmp_path, plugin, capsys):
    code = _run(tmp_path, f"dataset={plugin}:load", f"model.name={plugin}:later", "engine.vectorize=off")
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err and "boom in forward" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "boom in forward" in summary["reason"]
    assert "ValueError: boom in forward" in (tmp_path / "run" / "errors.log").read_text()


def test_good_plugin_still_runs(tmp_path, plugin):
    assert _run(tmp_path, f"dataset={plugin}:load", f"model.name={plugin}:good") == 0
