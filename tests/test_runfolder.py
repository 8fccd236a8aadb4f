import json

import pytest
import torch

from featherfl import wire
from featherfl.cli import main
from featherfl.engines.base import QuorumError
from featherfl.experiment import Experiment, prepare
from featherfl.runfolder import CheckpointError, load_checkpoint, save_checkpoint
from support.rows import metric_rows


@pytest.mark.parametrize("algorithm", ["fedavg", "fedsgd"])
def test_resume_equals_uninterrupted(tmp_path, algorithm):
    common = ["--algorithm", algorithm, "--quiet", "--set", "engine.fraction=0.5", "--set", "engine.dropout=0.2"]
    assert main(["run", "--rounds", "6", "--out", str(tmp_path / "full")] + common) == 0
    assert main(["run", "--rounds", "3", "--out", str(tmp_path / "part")] + common) == 0
    assert main(["run", "--resume", "--rounds", "6", "--out", str(tmp_path / "part"), "--quiet"]) == 0
    assert metric_rows(tmp_path / "full" / "metrics.jsonl") == metric_rows(tmp_path / "part" / "metrics.jsonl")
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["algorithm"]["model"]
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")["algorithm"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_discards_lines_after_checkpoint(tmp_path):
    out = tmp_path / "r"
    assert main(["run", "--rounds", "2", "--out", str(out), "--quiet"]) == 0
    with open(out / "metrics.jsonl", "a") as f:  # a line written after the last checkpoint (crash window)
        f.write('{"round": 3, "junk": true}\n')
    assert main(["run", "--resume", "--rounds", "3", "--out", str(out), "--quiet"]) == 0
    rows = metric_rows(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3] and "junk" not in rows[2]


def test_checkpoint_holds_the_rows_as_json_and_older_checkpoints_still_resume(tmp_path):
    """The rows travel as one JSON text (each row serialised once per run, not re-pickled every
    round); a checkpoint that holds them as a list of dicts, as older ones do, resumes the same."""
    common = ["--quiet", "--set", "engine.fraction=0.5"]
    assert main(["run", "--rounds", "3", "--out", str(tmp_path / "full")] + common) == 0
    assert main(["run", "--rounds", "2", "--out", str(tmp_path / "part")] + common) == 0
    ck = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert isinstance(ck["metrics"], str) and json.loads(ck["metrics"]) == metric_rows(tmp_path / "part" / "metrics.jsonl", drop=())
    save_checkpoint(tmp_path / "part" / "checkpoint.pt", {**ck, "metrics": json.loads(ck["metrics"])})
    assert main(["run", "--resume", "--rounds", "3", "--out", str(tmp_path / "part"), "--quiet"]) == 0
    assert metric_rows(tmp_path / "full" / "metrics.jsonl") == metric_rows(tmp_path / "part" / "metrics.jsonl")


def test_corrupt_checkpoint_detected(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["run", "--rounds", "2", "--out", str(out), "--quiet"]) == 0
    raw = bytearray((out / "checkpoint.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (out / "checkpoint.pt").write_bytes(bytes(raw))
    assert main(["run", "--resume", "--rounds", "3", "--out", str(out), "--quiet"]) == 2
    assert "corrupt" in capsys.readouterr().err
    with pytest.raises(CheckpointError):
        load_checkpoint(out / "checkpoint.pt")


def test_checkpoint_cannot_smuggle_objects(tmp_path):
    import hashlib
    import io
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    body = pickle.dumps({"x": Evil()})
    (tmp_path / "ck.pt").write_bytes(b"FFCK" + hashlib.sha256(body).digest() + body)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "ck.pt")
    save_checkpoint(tmp_path / "ok.pt", {"a": torch.ones(2)})
    assert torch.equal(load_checkpoint(tmp_path / "ok.pt")["a"], torch.ones(2))


class _Flaky:
    """Wraps a client half: client 1 raises, client 2 returns garbage bytes' payload of wrong shape."""

    def __init__(self, inner):
        self.inner = inner

    def downlink_specs(self, rnd):
        return self.inner.downlink_specs(rnd)

    def update(self, rnd, down, data, state):
        if data.cid == 1:
            raise RuntimeError("device fell over")
        up = self.inner.update(rnd, down, data, state)
        if data.cid == 2:
            from featherfl.algorithms.fedavg import WeightsUp

            return WeightsUp(torch.zeros(3), 1)
        return up


def test_failing_and_malformed_clients_are_counted_not_fatal(tmp_path, cfg_factory):
    cfg = cfg_factory(clients=5, rounds=2)
    p = prepare(cfg)
    exp = Experiment(p, tmp_path / "f", progress=False)
    exp.engine.client = _Flaky(exp.engine.client)
    s = exp.run()
    rows = [json.loads(l) for l in (tmp_path / "f" / "metrics.jsonl").read_text().splitlines()]
    assert s["rounds_completed"] == 2
    assert rows[0]["clients_ok"] == 3 and rows[0]["clients_dropped"] == 1 and rows[0]["clients_rejected"] == 1
    assert rows[0]["dropped_reasons"] == {"error": 1} and rows[0]["rejected_reasons"] == {"wrong-shape": 1}


def test_quorum_skip_and_stop(tmp_path, cfg_factory):
    cfg = cfg_factory(clients=4, rounds=3, engine__dropout=1.0, engine__min_replies=2, engine__max_failed_rounds=3)
    s = Experiment(prepare(cfg), tmp_path / "q", progress=False).run()
    rows = [json.loads(l) for l in (tmp_path / "q" / "metrics.jsonl").read_text().splitlines()]
    assert s["rounds_completed"] == 3 and s["rounds_skipped"] == 3 and not rows[0]["aggregated"]
    cfg = cfg_factory(clients=4, rounds=3, engine__dropout=1.0, engine__min_replies=2, engine__on_quorum_fail="stop")
    s = Experiment(prepare(cfg), tmp_path / "q2", progress=False).run()
    assert s["rounds_completed"] == 0 and "fewer than engine.min_replies" in s["stopped"]


def test_same_config_same_metrics(tmp_path):
    for name in ("a", "b"):
        assert main(["run", "--rounds", "3", "--set", "engine.fraction=0.6", "--out", str(tmp_path / name), "--quiet"]) == 0
    assert metric_rows(tmp_path / "a" / "metrics.jsonl") == metric_rows(tmp_path / "b" / "metrics.jsonl")
