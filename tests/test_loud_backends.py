"""Class 5 of the hostile list: a back end that cannot be reached is one line within seconds,
and SIGTERM always ends the process."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featherfl import cli

ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize(
    "sets, needle",
    [
        (lambda p: ["log.mlflow_uri=http://127.0.0.1:%d" % p], "cannot reach http://127.0.0.1"),
        (lambda p: ["engine.name=ray", "engine.address=127.0.0.1:%d" % p], "cannot reach the Ray cluster"),
    ],
    ids=["mlflow", "ray"],
)
def test_unreachable_back_end_is_one_line_in_seconds(tmp_path, capsys, sets, needle):
    pytest.importorskip("mlflow" if "mlflow" in needle or "http" in needle else "ray")
    argv = ["run", "--rounds", "1", "--clients", "2", "--out", str(tmp_path / "r"), "--quiet"]
    for s in sets(_closed_port()):
        argv += ["--set", s]
    t = time.monotonic()
    assert cli.main(argv) == 2
    assert time.monotonic() - t < 15
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "r").exists()


def test_sigterm_ends_a_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "long"
    proc = subprocess.Popen(
        [sys.executable, "-m", "featherfl", "run", "--rounds", "100000", "--clients", "2", "--out", str(out), "--quiet", "--set", "engine.threads=1", "--set", "fedavg.max_steps=1"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 143
    assert "terminated" in proc.stderr.read()
