"""Client states on disk (``engine.client_state = disk``): RAM holds the cohort, checkpoints hold an
index, and a crash between a round's records and its checkpoint resumes to identical rows."""

import json

import numpy as np
import pytest
import torch

from featherfl import cli
from featherfl.engines.state_store import DiskStates, StateStoreError

FD = ["run", "--algorithm", "fd", "--dataset", "digits", "--clients", "6", "--seed", "2", "--quiet", "--set", "log.plots=false", "--set", "engine.threads=1",
      "--set", "engine.fraction=0.5", "--set", "fd.local_steps=3", "--set", "partition.name=iid"]


def _rows(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_store_keeps_only_touched_states_and_commits_them(tmp_path):
    s = DiskStates(tmp_path, 1000)
    for cid in (3, 500):
        s.setdefault(cid, {})["w"] = torch.full((4,), float(cid))
    s[3]["round"] = 7
    d = s.commit()
    assert s.cache == {} and 3 in s and 500 in s and 4 not in s and len(s) == 2
    assert torch.equal(s.peek(500)["w"], torch.full((4,), 500.0)) and s.cache == {}  # peek keeps nothing
    assert s.setdefault(3, {})["round"] == 7 and list(s.cache) == [3]
    assert d["length"] == (tmp_path / "client_states.0.bin").stat().st_size
    assert s.memory_bytes() == 3 * 8 * 1000  # three numbers per client, whatever the state size
    assert d["ids"].tolist() == [3, 500] and d["population"] == 1000  # the checkpoint holds only clients with a state
    s.setdefault(7, {})  # touched, still empty: nothing written
    assert s.commit()["ids"].tolist() == [3, 500] and 7 not in s


def test_restore_cuts_off_records_written_after_the_checkpoint(tmp_path):
    s = DiskStates(tmp_path, 10)
    s.setdefault(1, {})["v"] = torch.tensor([1.0])
    d = s.commit()
    s.setdefault(1, {})["v"] = torch.tensor([2.0])  # the next round changes it ...
    s.commit()  # ... and its records reach the file, but its checkpoint never does (kill -9)
    again = DiskStates(tmp_path, 10)
    again.restore(d)
    assert torch.equal(again[1]["v"], torch.tensor([1.0]))
    assert (tmp_path / "client_states.0.bin").stat().st_size == d["length"]


def test_restore_refuses_a_short_file_and_a_corrupt_record(tmp_path):
    s = DiskStates(tmp_path, 4)
    s.setdefault(0, {})["v"] = torch.zeros(100)
    d = s.commit()
    raw = bytearray((tmp_path / "client_states.0.bin").read_bytes())
    raw[-5] ^= 0xFF
    (tmp_path / "client_states.0.bin").write_bytes(bytes(raw))
    t = DiskStates(tmp_path, 4)
    t.restore(d)
    with pytest.raises(StateStoreError, match="corrupt"):
        t.peek(0)
    (tmp_path / "client_states.0.bin").write_bytes(bytes(raw[:10]))
    with pytest.raises(StateStoreError, match="cut short"):
        DiskStates(tmp_path, 4).restore(d)


def test_compaction_moves_live_records_to_a_new_generation(tmp_path, monkeypatch):
    import featherfl.engines.state_store as store

    monkeypatch.setattr(store, "COMPACT_MIN_BYTES", 0)
    s = DiskStates(tmp_path, 3)
    for v in range(4):
        s.setdefault(0, {})["v"] = torch.full((50,), float(v))
        d = s.commit()
    assert d["generation"] >= 1 and torch.equal(s.peek(0)["v"], torch.full((50,), 3.0))
    s.setdefault(1, {})
    s.commit()  # the checkpoint names the new generation by now: the old files are gone
    names = sorted(p.name for p in tmp_path.glob("client_states.*.bin"))
    assert names == [f"client_states.{s.gen}.bin"]
    r = DiskStates(tmp_path, 3)
    r.restore(s.descriptor())
    assert torch.equal(r.peek(0)["v"], torch.full((50,), 3.0))


def test_fd_on_disk_equals_fd_in_memory_and_resumes_identically(tmp_path):
    assert cli.main([*FD, "--rounds", "3", "--out", str(tmp_path / "mem"), "--set", "engine.client_state=memory"]) == 0
    assert cli.main([*FD, "--rounds", "3", "--out", str(tmp_path / "disk"), "--set", "engine.client_state=disk"]) == 0
    assert _rows(tmp_path / "mem") == _rows(tmp_path / "disk")
    assert list((tmp_path / "disk").glob("client_states.*.bin")) and not list((tmp_path / "mem").glob("client_states.*.bin"))
    # a crash after round 2's checkpoint, once round 3's records had reached the file: resume cuts them off
    part = tmp_path / "part"
    assert cli.main([*FD, "--rounds", "2", "--out", str(part), "--set", "engine.client_state=disk"]) == 0
    f = next(part.glob("client_states.*.bin"))
    with open(f, "ab") as fh:
        fh.write(np.random.default_rng(0).bytes(5000))
    assert cli.main(["run", "--resume", "--out", str(part), "--rounds", "3", "--quiet"]) == 0
    assert _rows(part) == _rows(tmp_path / "disk")


def test_error_feedback_residuals_on_disk_equal_in_memory_and_stay_out_of_the_checkpoint(tmp_path):
    from featherfl.runfolder import load_checkpoint

    args = ["run", "--algorithm", "fedavg", "--dataset", "digits", "--clients", "6", "--rounds", "3", "--seed", "4", "--quiet", "--set", "log.plots=false",
            "--set", "engine.threads=1", "--set", "engine.fraction=0.5", "--set", "fedavg.max_steps=2", "--set", "partition.name=iid",
            "--set", "compress.method=topk", "--set", "compress.error_feedback=on"]
    assert cli.main([*args, "--out", str(tmp_path / "mem"), "--set", "engine.client_state=memory"]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "disk"), "--set", "engine.client_state=disk"]) == 0
    assert _rows(tmp_path / "mem") == _rows(tmp_path / "disk")
    mem = load_checkpoint(tmp_path / "mem" / "checkpoint.pt")["client_states"]
    disk = load_checkpoint(tmp_path / "disk" / "checkpoint.pt")["client_states"]
    assert any(mem.values()) and disk["store"] == "disk" and sorted(disk["ids"].tolist()) == sorted(mem)  # residuals held per client, only an index checkpointed


@pytest.mark.slow
def test_kill_9_at_random_points_with_states_on_disk_resumes_to_identical_rows(tmp_path):
    """The crash test of test_hardening_crash, for FD with its device states in the store."""
    import random

    from test_hardening_crash import _kill_at_random_point, _start

    from featherfl.runfolder import load_checkpoint

    args = [*FD[1:], "--rounds", "6", "--set", "engine.client_state=disk", "--set", "engine.dropout=0.2"]
    assert cli.main(["run", "--out", str(tmp_path / "ref"), *args]) == 0
    rng = random.Random(7)
    out = tmp_path / "killed"
    kills = _kill_at_random_point(_start(out, *args), out, rng)
    kills += _kill_at_random_point(_start(out, "--resume", "--quiet"), out, rng)
    assert kills >= 1, "the run finished before it could be killed"
    done = _start(out, "--resume", "--quiet")
    assert done.wait(timeout=300) == 0, done.stderr.read().decode()
    assert _rows(out) == _rows(tmp_path / "ref")
    a, b = (load_checkpoint(d / "checkpoint.pt")["client_states"] for d in (out, tmp_path / "ref"))
    sa, sb = DiskStates(out, 6), DiskStates(tmp_path / "ref", 6)
    sa.restore(a)
    sb.restore(b)
    for cid in range(6):
        x, y = sa.peek(cid), sb.peek(cid)
        assert x.keys() == y.keys() and all(torch.equal(x["model"][k], y["model"][k]) for k in x.get("model", {}))
