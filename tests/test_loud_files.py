"""Classes 6, 7, 8 and 10 of the hostile list: the file system, report/compare trusting what
they read, advice that goes in a circle, and small ones. Each case is one line, the right
exit status, and nothing outside the run folder touched."""

import errno
import json
import os
from pathlib import Path

import pytest

from featherfl import cli
from support.rows import all_rows

RUN = ["--rounds", "1", "--clients", "2", "--quiet", "--set", "engine.threads=1", "--set", "fedavg.max_steps=1"]


def _one_line(capsys, argv, code=2):
    got = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert got == code, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "done"
    assert cli.main(["run", "--out", str(out), *RUN]) == 0
    return out


# --- class 6: the file system ---------------------------------------------------------


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda t: (t / "dangling").symlink_to(t / "nowhere") or t / "dangling", "does not exist"),
        (lambda t: (t / "loop").symlink_to(t / "loop") or t / "loop", "link loop"),
        (lambda t: t / ("x" * 300), "over the file system's limit"),
        (lambda t: t / "/".join(["y" * 200] * 25), "over the file system's limit"),
        (lambda t: Path("/proc/featherfl-run"), "/proc"),
    ],
    ids=["dangling", "loop", "name-max", "path-max", "proc"],
)
def test_bad_out_paths_are_one_line(tmp_path, capsys, make, needle):
    out = make(tmp_path)
    assert needle in _one_line(capsys, ["run", "--out", str(out), *RUN])


def test_empty_out_is_refused_not_defaulted(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--out is empty" in _one_line(capsys, ["run", "--out", "", *RUN])
    assert not (tmp_path / "runs").exists()


def test_full_disk_keeps_the_checkpoint_and_leaves_no_temp_files(tmp_path, capsys, monkeypatch):
    out = tmp_path / "full"
    assert cli.main(["run", "--out", str(out), *RUN]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    line = _one_line(capsys, ["run", "--resume", "--out", str(out), *RUN[:1], "2", *RUN[2:]], code=1)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert "No space left on device" in line
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]


def test_report_on_a_read_only_folder_prints_the_table(finished, tmp_path, capsys):
    import shutil

    ro = tmp_path / "ro"
    shutil.copytree(finished, ro)
    shutil.rmtree(ro / "plots")
    (ro / "plots").write_text("a file where the plots folder goes")
    assert cli.main(["report", str(ro)]) == 0
    out = capsys.readouterr().out
    assert "fedavg" in out and "plots not written" in out and "is a file" in out


def test_overwrite_removes_a_plots_link_never_its_target(finished, tmp_path):
    import shutil

    run = tmp_path / "r"
    shutil.copytree(finished, run)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "accuracy_vs_round.png").write_bytes(b"my own file")
    shutil.rmtree(run / "plots")
    (run / "plots").symlink_to(mine, target_is_directory=True)
    assert cli.main(["run", "--overwrite", "--out", str(run), *RUN]) == 0
    assert (mine / "accuracy_vs_round.png").read_bytes() == b"my own file"
    assert not (run / "plots").is_symlink() and (run / "plots" / "accuracy_vs_round.png").is_file()


# --- class 7: report and compare trust nothing ------------------------------------------


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda r: r.update(accuracy=float("nan")), "accuracy nan"),
        (lambda r: r.update(bytes_up=-5), "bytes_up is negative"),
    ],
)
def test_report_refuses_impossible_metrics(finished, tmp_path, capsys, change, needle):
    import shutil

    d = tmp_path / "bad"
    shutil.copytree(finished, d)
    rows = all_rows(d)
    change(rows[0])
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert needle in _one_line(capsys, ["report", str(d)])


def test_empty_metrics_is_not_a_completed_run(finished, tmp_path, capsys):
    import shutil

    d = tmp_path / "empty"
    shutil.copytree(finished, d)
    (d / "metrics.jsonl").write_text("")
    assert "holds 0" in _one_line(capsys, ["report", str(d)])


def test_killed_run_is_incomplete_with_per_client_bytes(tmp_path, capsys):
    d = tmp_path / "killed"
    assert cli.main(["run", "--out", str(d), "--rounds", "2", "--clients", "4", "--quiet", "--set", "fedavg.max_steps=1"]) == 0
    (d / "summary.json").unlink()
    capsys.readouterr()
    assert cli.main(["report", str(d), "--format", "json"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    total_up = sum(r["bytes_up"] for r in all_rows(d))
    assert row["status"] == "incomplete" and row["algorithm"] == "fedavg" and row["dataset"] == "digits"
    assert row["MB_up/client"] == pytest.approx(total_up / 4 / 1e6)
    assert cli.main(["report", str(d)]) == 0
    assert "its last round was 2" in capsys.readouterr().out


# --- class 8: advice that works ----------------------------------------------------------


def test_run_killed_before_its_first_checkpoint_names_overwrite(finished, tmp_path, capsys):
    import shutil

    d = tmp_path / "early"
    shutil.copytree(finished, d)
    for name in ("checkpoint.pt", "summary.json"):
        (d / name).unlink()
    (d / "metrics.jsonl").write_text("")
    assert "--overwrite" in _one_line(capsys, ["run", "--resume", "--out", str(d), *RUN])
    line = _one_line(capsys, ["run", "--out", str(d), *RUN])
    assert "--overwrite" in line and "--resume" not in line
    assert cli.main(["run", "--overwrite", "--out", str(d), *RUN]) == 0


def test_checkpoint_that_is_a_folder(finished, tmp_path, capsys):
    import shutil

    d = tmp_path / "ckdir"
    shutil.copytree(finished, d)
    (d / "checkpoint.pt").unlink()
    (d / "checkpoint.pt").mkdir()
    assert "is not a file" in _one_line(capsys, ["run", "--resume", "--out", str(d), *RUN])


def test_reproduce_at_a_finished_folder_does_not_suggest_resume(finished, monkeypatch):
    """reproduce has neither --resume nor --overwrite: the only fix is another folder."""
    from featherfl.config import ConfigError
    from featherfl.reproduce import runner

    monkeypatch.setattr(runner, "get_recipe", lambda name: type("R", (), {"options": {}, "check_options": None, "default_data_dir": str(finished), "check": None})())
    with pytest.raises(ConfigError) as e:
        runner.cmd_reproduce("fd-table1", out=str(finished), data_dir=str(finished))
    assert "--resume" not in str(e.value) and "--overwrite" not in str(e.value) and "choose another --out" in str(e.value)


def test_reproduce_devices_too_many_names_devices(capsys):
    line = _one_line(capsys, ["reproduce", "fd-table1", "--set", "devices=[1000000]"])
    assert "devices" in line and "'clients'" not in line


# --- class 10: small ones ----------------------------------------------------------------


def test_demo_only_unknown_lists_the_names(tmp_path, capsys):
    line = _one_line(capsys, ["demo", "--only", "nosuchname", "--out", str(tmp_path / "d")])
    assert "fedavg" in line and "nosuchname" in line


def test_reproduce_help_lists_every_recipe(capsys):
    from featherfl.reproduce import RECIPES

    with pytest.raises(SystemExit):
        cli.main(["reproduce", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in RECIPES)


def test_config_file_with_a_bom(tmp_path):
    cfg = tmp_path / "win.toml"
    cfg.write_bytes("\ufeffrounds = 1\nclients = 2\n".encode("utf-8"))
    assert cli.main(["run", str(cfg), "--out", str(tmp_path / "r"), "--quiet", "--set", "fedavg.max_steps=1"]) == 0


def test_report_where_plots_cannot_be_written_still_prints_the_table(finished, capsys, monkeypatch):
    """A read-only run folder (simulated: as root, permissions would not stop the write)."""
    from featherfl import report

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(report, "_draw", denied)
    assert cli.main(["report", str(finished)]) == 0
    out = capsys.readouterr().out
    assert "fedavg" in out and "plots not written" in out and "Permission denied" in out
