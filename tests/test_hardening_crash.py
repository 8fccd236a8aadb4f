"""Crash safety: ``kill -9`` at a random point, ``--resume``, and the result equals an
uninterrupted run; checkpoints are replaced atomically and corruption is detected."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from featherfl import runfolder
from featherfl.cli import main
from featherfl.runfolder import CheckpointError, load_checkpoint, save_checkpoint
from support.rows import metric_rows

ROUNDS = 6
COMMON = ["--rounds", str(ROUNDS), "--clients", "6", "--quiet", "--set", "engine.fraction=0.5", "--set", "engine.dropout=0.2", "--set", "fedavg.max_steps=3", "--set", "engine.threads=1"]
ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _lines(path):
    return len(path.read_text().splitlines()) if path.exists() else -1


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _start(out, *extra):
    cmd = [sys.executable, "-m", "featherfl", "run", "--out", str(out), *extra]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _kill_at_random_point(proc, out, rng, limit=240.0):
    """SIGKILL once the run has written a seeded-random number of rounds, after a random delay."""
    rounds_done = rng.randint(0, ROUNDS - 2)
    delay = rng.uniform(0.0, 0.4)
    t0 = time.monotonic()
    while proc.poll() is None and _lines(out / "metrics.jsonl") < rounds_done and time.monotonic() - t0 < limit:
        time.sleep(0.02)
    time.sleep(delay)
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return alive


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_equals_uninterrupted(tmp_path):
    threads = torch.get_num_threads()
    try:
        assert main(["run", "--out", str(tmp_path / "ref")] + COMMON) == 0
    finally:
        torch.set_num_threads(threads)
    rng = random.Random(20240607)
    out = tmp_path / "killed"
    kills = 0
    kills += _kill_at_random_point(_start(out, *COMMON), out, rng)
    kills += _kill_at_random_point(_start(out, "--resume", "--quiet"), out, rng)
    assert kills >= 1, "the run finished before it could be killed"
    done = _start(out, "--resume", "--quiet")
    assert done.wait(timeout=300) == 0, done.stderr.read().decode()
    assert metric_rows(out) == metric_rows(tmp_path / "ref")
    a, b = load_checkpoint(out / "checkpoint.pt"), load_checkpoint(tmp_path / "ref" / "checkpoint.pt")
    assert a["round"] == b["round"] == ROUNDS
    assert _same(a["algorithm"], b["algorithm"]) and _same(a["client_states"], b["client_states"])
    assert json.loads((out / "summary.json").read_text())["rounds_completed"] == ROUNDS


def test_failed_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"round": 1, "w": torch.arange(4.0)})

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(runfolder.os, "fsync", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"round": 2, "w": torch.zeros(10**5)})
    monkeypatch.undo()
    ck = load_checkpoint(path)
    assert ck["round"] == 1 and torch.equal(ck["w"], torch.arange(4.0))


@pytest.mark.parametrize("damage", ["truncate-half", "truncate-header", "empty", "flip-body", "flip-checksum", "foreign"])
def test_corrupt_checkpoint_named_one_line_exit_2(tmp_path, capsys, damage):
    out = tmp_path / "r"
    assert main(["run", "--rounds", "1", "--clients", "3", "--out", str(out), "--quiet", "--set", "fedavg.max_steps=1"]) == 0
    ck = out / "checkpoint.pt"
    raw = bytearray(ck.read_bytes())
    if damage == "truncate-half":
        raw = raw[: len(raw) // 2]
    elif damage == "truncate-header":
        raw = raw[:20]
    elif damage == "empty":
        raw = b""
    elif damage == "flip-body":
        raw[-100] ^= 0x01
    elif damage == "flip-checksum":
        raw[10] ^= 0x80
    else:
        raw = b"PK\x03\x04" + bytes(raw[4:])  # a plain torch.save zip, no checksum
    ck.write_bytes(bytes(raw))
    capsys.readouterr()
    assert main(["run", "--resume", "--rounds", "2", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(ck) in err and ("corrupt" in err or "truncated" in err), err
    with pytest.raises(CheckpointError):
        load_checkpoint(ck)
