"""Class 9 of the hostile list: ``--set secagg.protocol=secagg+`` alone works for every method
the README names; defaults it cannot use are changed and said, explicit choices refused."""

import json

import pytest

from featherfl import cli


def _run(tmp_path, *sets):
    argv = ["run", "--rounds", "1", "--clients", "3", "--out", str(tmp_path / "run"), "--quiet", "--set", "engine.threads=1", "--set", "partition.name=iid", "--set", "secagg.protocol=secagg+"]
    for s in sets:
        argv += ["--set", s]
    return cli.main(argv)


@pytest.mark.parametrize("method, extra", [("fedavg", ["fedavg.max_steps=1"]), ("fedsgd", []), ("baffle", ["baffle.k=4"]), ("baffle", ["baffle.k=4", "baffle.mode=fedavg", "baffle.local_steps=2"])])
def test_one_flag_secure_aggregation(tmp_path, capsys, method, extra):
    assert _run(tmp_path, f"algorithm={method}", *extra) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert f"{method}.weighting = uniform chosen" in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert any(f"{method}.weighting = uniform chosen" in w for w in summary["warnings"])
    toml = (tmp_path / "run" / "config.toml").read_text()
    assert 'weighting = "uniform"' in toml  # the run's record says what ran; a resume keeps it
    if "baffle.mode=fedavg" in extra:
        assert 'directions = "shared-all"' in toml and "baffle.directions = shared-all chosen" in err
    assert cli.main(["run", "--resume", "--out", str(tmp_path / "run"), "--rounds", "2", "--quiet"]) == 0


def test_explicit_incompatible_choice_is_refused(tmp_path, capsys):
    assert _run(tmp_path, "fedavg.weighting=capped") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fedavg.weighting" in err[0]
    assert _run(tmp_path, "algorithm=baffle", "baffle.mode=fedavg", "baffle.directions=shared") == 2
    assert "baffle.directions" in capsys.readouterr().err
