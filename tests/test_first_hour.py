"""What a newcomer meets first: help that names things, no silent no-ops, Python errors in Python words."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import featherfl
from featherfl import algorithms
from featherfl.cli import main
from featherfl.config import ConfigError
from featherfl.schema import build_config, reference_markdown
from featherfl.data.sources import source_names
from featherfl.models import model_names

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--rounds", "1", "--clients", "3", "--set", "engine.threads=1", "--set", "log.plots=false", "--quiet"]


def test_run_help_names_every_algorithm_dataset_and_model_and_every_flag_has_help(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in algorithms.names() + [n for n in source_names() if not n.startswith("python-")] + model_names():
        assert name in text, name
    assert "module:attribute" in text
    from featherfl.cli import _parser

    for action in _parser()._subparsers._group_actions[0].choices["run"]._actions:
        assert action.help, action.dest


def test_every_flag_of_every_command_has_help():
    from featherfl.cli import _parser

    for name, sub in _parser()._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest}"


def test_config_doc_for_one_method_and_for_a_plugin(tmp_path, monkeypatch, capsys):
    assert main(["config-doc", "--algorithm", "baffle"]) == 0
    out = capsys.readouterr().out
    assert "`baffle.k`" in out and "`fedavg.lr`" not in out
    (tmp_path / "myalg.py").write_text(
        textwrap.dedent(
            """
            from featherfl.algorithms.fedavg import FedAvg
            from featherfl.config import Field

            class Mine(FedAvg):
                name = "myalg"
                CONFIG = {**{k.replace("fedavg.", "myalg."): v for k, v in FedAvg.CONFIG.items()}, "myalg.mu": Field("float", 0.01, "Proximal weight.", min=0.0)}
            """
        )
    )
    monkeypatch.chdir(tmp_path)  # the current folder is importable, as with `python -m`
    assert main(["config-doc", "--algorithm", "myalg:Mine"]) == 0
    assert "`myalg.mu`" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="expected one of"):
        reference_markdown("nope")


def test_a_key_of_another_method_is_an_error_naming_the_running_method(capsys):
    with pytest.raises(ConfigError, match="'baffle.k' is for baffle, but the running method is fedavg"):
        build_config(overrides=[("baffle.k", 10)])
    build_config(overrides=[("algorithm", "baffle"), ("baffle.k", 10)])
    build_config(overrides=[("algorithm", "baffle"), ("baffle.peft", True), ("fedpeft.method", "head")])  # BAFFLE-PEFT reads [fedpeft]
    build_config(overrides=[("baffle.k", 100)])  # the default: what a saved config.toml lists


def test_resume_of_a_finished_run_says_so_in_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *QUICK]) == 0
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(["run", "--resume", "--out", str(out), "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"{out} is complete at 1 rounds; nothing to do (--rounds M with M > 1 continues it)"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert main(["run", "--resume", "--out", str(out), "--rounds", "2", "--quiet"]) == 0
    assert len(featherfl.load_run(out).metrics) == 2


def test_python_resume_and_errors_that_name_python_arguments(tmp_path):
    cfg = {"rounds": 1, "clients": 3, "engine": {"threads": 1}, "log": {"plots": False}}
    r = featherfl.run(cfg, out=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"pass resume=True to continue it, overwrite=True to replace it") as e:
        featherfl.run(cfg, out=tmp_path / "a")
    assert "--" not in str(e.value)
    assert featherfl.run(out=tmp_path / "a", resume=True).summary == r.summary  # complete: returned as is
    more = featherfl.run(out=tmp_path / "a", resume=True, rounds=2)
    assert len(more.metrics) == 2 and more.metrics[0] == r.metrics[0]
    with pytest.raises(ConfigError, match="resume=True needs out="):
        featherfl.run(resume=True)
    with pytest.raises(ConfigError, match="resume=True: .* holds no checkpoint.pt"):
        featherfl.run(out=tmp_path / "b", resume=True)


def test_a_plugin_model_beside_the_config_imports_without_pythonpath(tmp_path):
    (tmp_path / "mymodel.py").write_text(
        "from torch import nn\n\ndef build(input_shape, num_classes):\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)  # featherfl itself, not the current folder
    p = subprocess.run([sys.executable, "-m", "featherfl", "run", "--model", "mymodel:build", "--out", "r", *QUICK], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert 'name = "mymodel:build"' in (tmp_path / "r" / "config.toml").read_text()
