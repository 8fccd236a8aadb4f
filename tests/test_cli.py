import json
import subprocess
import sys
from pathlib import Path

import pytest

from featherfl.cli import main

METRIC_KEYS = {"round", "accuracy", "loss", "bytes_up", "bytes_down", "clients_sampled", "clients_ok", "clients_dropped", "clients_rejected", "seconds"}
SUMMARY_KEYS = {"algorithm", "dataset", "rounds_completed", "final_accuracy", "bytes_up", "bytes_down", "model_parameters", "wall_seconds"}


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["run", "--set", "rounds=abc"], "rounds"),
        (["run", "--set", "partition.alpha=-1"], "partition.alpha"),
        (["run", "--set", "engine.fraction=2"], "engine.fraction"),
        (["run", "--set", "partition.name=weird"], "iid, dirichlet"),
        (["run", "--set", "model.name=nope"], "mlp"),
        (["run", "--algorithm", "nope"], "fedavg"),
        (["run", "--set", "bogus.key=1"], "valid"),
        (["run", "--set", "fedavg.nonsense=1"], "fedavg.local_epochs"),
        (["run", "--dataset", "mnist", "--set", "data.dir=/nonexistent/mnist"], "/nonexistent/mnist"),
        (["run", "/no/such/config.toml"], "does not exist"),
        (["run", "--set", "noequals"], "KEY=VALUE"),
        (["run", "--resume"], "--out"),
    ],
)
def test_config_errors_one_line_exit_2(capsys, tmp_path, argv, needle):
    code, err = _err(capsys, argv + ["--out", str(tmp_path / "r")] if argv[-1] != "--resume" else argv)
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert needle in err
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_unknown_key_lists_valid_ones(capsys):
    code, err = _err(capsys, ["run", "--set", "engine.nme=local"])
    assert code == 2 and "engine.name" in err and "engine.fraction" in err


def test_subprocess_exit_code_and_single_line():
    r = subprocess.run([sys.executable, "-m", "featherfl", "run", "--set", "rounds=abc"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "rounds" in r.stderr


def _leaving(tmp_path, body: str) -> subprocess.CompletedProcess:
    """A process whose last line is ``featherfl.cli.leave`` (the command's exit without teardown)."""
    code = "import atexit, sys, threading, time\nfrom featherfl.cli import leave\n" + body
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_leave_runs_atexit_hooks_flushes_and_keeps_the_code(tmp_path):
    r = _leaving(tmp_path, "atexit.register(lambda: open('hook', 'w').write('ran'))\nsys.stdout.write('no newline, still buffered')\nleave(3)\n")
    assert r.returncode == 3
    assert r.stdout == "no newline, still buffered"
    assert (tmp_path / "hook").read_text() == "ran"


def test_leave_waits_for_a_thread_that_is_not_a_daemon(tmp_path):
    # the normal exit joins such a thread: leave must not cut it off
    r = _leaving(tmp_path, "threading.Thread(target=lambda: (time.sleep(0.5), open('late', 'w').write('done'))).start()\nleave(0)\n")
    assert r.returncode == 0
    assert (tmp_path / "late").read_text() == "done"


def test_a_profiled_command_still_writes_its_profile(tmp_path):
    # cProfile writes its file after the command returns: the command must not end the process first
    r = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(tmp_path / "p.prof"), "-m", "featherfl", "config-doc"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.prof").stat().st_size > 0


def test_command_run_exits_without_teardown_yet_complete(tmp_path):
    # python -m featherfl ends through leave: every file written and closed, exit 0
    out = tmp_path / "r"
    r = subprocess.run([sys.executable, "-m", "featherfl", "run", "--rounds", "2", "--clients", "3", "--set", "log.plots=false", "--set", "engine.threads=1", "--quiet", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "2 rounds" in r.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in rows] == [1, 2]
    assert json.loads((out / "summary.json").read_text())["rounds_completed"] == 2


def test_run_writes_run_folder(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["run", "--algorithm", "fedavg", "--dataset", "digits", "--rounds", "5", "--out", str(out), "--quiet"]) == 0
    for f in ("config.toml", "metrics.jsonl", "summary.json", "checkpoint.pt", "clients.json", "plots/accuracy_vs_round.png", "plots/accuracy_vs_mb.png"):
        assert (out / f).exists(), f
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and METRIC_KEYS <= set(rows[0])
    s = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(s) and 0 <= s["final_accuracy"] <= 1 and s["rounds_completed"] == 5
    assert s["bytes_up"] == sum(r["bytes_up"] for r in rows)
    # every client uploads 4 x parameters + a small header, measured
    per = rows[0]["bytes_up_per_client"]
    assert all(4 * s["model_parameters"] < v <= 4 * s["model_parameters"] + 128 for v in per.values())
    # rerunning into the same folder without --resume is refused
    assert main(["run", "--rounds", "5", "--out", str(out), "--quiet"]) == 2
    assert main(["report", str(out)]) == 0
    assert "fedavg" in capsys.readouterr().out
    assert main(["compare", str(out), str(out), "--out", str(tmp_path / "cmp.png"), "--format", "markdown"]) == 0
    assert (tmp_path / "cmp.png").exists()


def test_default_run_reaches_90_percent(tmp_path):
    """The no-argument experiment: FedAvg, digits, 10 clients, Dirichlet(0.5), 20 rounds."""
    out = tmp_path / "default"
    assert main(["run", "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["algorithm"] == "fedavg" and s["dataset"] == "digits" and s["rounds_completed"] == 20 and s["clients"] == 10
    assert s["final_accuracy"] >= 0.90


def test_config_toml_round_trips(tmp_path):
    out = tmp_path / "a"
    assert main(["run", "--rounds", "2", "--set", "partition.alpha=0.3", "--out", str(out), "--quiet"]) == 0
    from featherfl.schema import build_config

    cfg = build_config((out / "config.toml").read_text())
    assert cfg["partition.alpha"] == 0.3 and cfg["rounds"] == 2
