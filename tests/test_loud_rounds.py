"""Class 2 of the hostile list: a run that aggregates nothing is a failed run, and settings
that can never succeed are refused before the run."""

import json

import pytest

from featherfl import cli


def _run(tmp_path, *sets, rounds=2):
    argv = ["run", "--rounds", str(rounds), "--clients", "3", "--out", str(tmp_path / "run"), "--quiet", "--set", "engine.threads=1", "--set", "partition.name=iid"]
    if not any(s.startswith("algorithm=") for s in sets):  # keys of a method that is not running are refused
        argv += ["--set", "fedavg.max_steps=1"]
    for s in sets:
        argv += ["--set", s]
    return cli.main(argv)


@pytest.mark.parametrize(
    "setting, needle",
    [
        ("engine.dropout=1.0", "dropout 3"),
        ("engine.deadline=1e-9", "deadline 3"),
    ],
)
def test_a_round_with_no_update_fails_the_run(tmp_path, capsys, setting, needle):
    assert _run(tmp_path, setting) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "engine.max_failed_rounds=0" in err[0] and needle in err[0], err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["rounds_completed"] == 1


def test_non_finite_replies_fail_the_run(tmp_path, capsys):
    """A learning rate that overflows float32 makes every reply non-finite: all are rejected."""
    assert _run(tmp_path, "fedavg.lr=1e38", "fedavg.max_steps=3") == 1
    err = capsys.readouterr().err
    assert "non-finite 3" in err and "errors.log" not in err  # nothing raised: no errors.log to point at


def test_max_failed_rounds_allows_a_few(tmp_path, capsys):
    assert _run(tmp_path, "engine.dropout=1.0", "engine.max_failed_rounds=2") == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_skipped"] == 2


def test_payload_cap_below_the_update_is_refused_before_the_run(tmp_path, capsys):
    assert _run(tmp_path, "engine.max_payload_mb=0.001") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "engine.max_payload_mb" in err[0] and "every reply would be rejected" in err[0]
    assert not (tmp_path / "run").exists()


def test_baffle_scalars_fit_a_small_cap(tmp_path):
    """BAFFLE's K scalars are far below a cap that FedAvg's weights exceed: no refusal."""
    assert _run(tmp_path, "algorithm=baffle", "baffle.k=4", "engine.max_payload_mb=0.001", rounds=1) == 0


def test_an_artifact_that_cannot_be_written_fails_the_run(tmp_path, monkeypatch):
    """A method's artifacts are written before summary.json, so their failure is the run's status,
    not an exit 1 beside a summary that says completed."""
    from featherfl.algorithms.base import Algorithm

    def boom(self, run_dir):
        raise OSError("no space left on device")

    monkeypatch.setattr(Algorithm, "artifacts", boom)
    assert _run(tmp_path, rounds=1) == 1
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert "no space left on device" in (run / "errors.log").read_text()
