"""Runs a user can trust: failing clients never look like success, run folders are never
silently replaced or corrupted by a failed resume, and every byte that arrived is counted."""

import hashlib
import json
from pathlib import Path

import pytest

from featherfl import cli
from featherfl.algorithms import fedavg

BASE = ["--clients", "3", "--set", "engine.threads=1", "--set", "fedavg.max_steps=2", "--quiet"]


def _run(out, *extra, rounds=2):
    return cli.main(["run", "--out", str(out), "--rounds", str(rounds), *BASE, *extra])


def _folder_digest(d: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def _raise_for(monkeypatch, bad: set[int] | None):
    honest = fedavg.WeightsClient.update

    def update(self, rnd, down, data, state):
        if bad is None or data.cid in bad:
            raise ValueError(f"label 7 is out of range for 2 classes\nsecond line of detail (client {data.cid})")
        return honest(self, rnd, down, data, state)

    monkeypatch.setattr(fedavg.WeightsClient, "update", update)


# --- 2. failing clients ------------------------------------------------------------------

def test_every_client_failing_exits_1_with_status_failed(tmp_path, monkeypatch, capsys):
    _raise_for(monkeypatch, None)
    out = tmp_path / "run"
    assert _run(out) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ValueError: label 7 is out of range" in err[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "ValueError" in summary["reason"]
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {e["type"] for e in row["errors"]} == {"ValueError"}
    assert all(e["message"] == "label 7 is out of range for 2 classes" for e in row["errors"])
    log = (out / "errors.log").read_text()
    assert "Traceback" in log and "second line of detail" in log
    assert summary["rounds_completed"] == 1  # stopped at the first round, not after all of them


def test_a_minority_of_failures_is_recorded_and_tolerated(tmp_path, monkeypatch):
    _raise_for(monkeypatch, {1})
    out = tmp_path / "run"
    assert _run(out, "--set", "engine.max_failure_share=0.5") == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all([e["cid"] for e in r["errors"]] == [1] for r in rows)
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"


def test_failure_share_over_the_limit_stops_the_run(tmp_path, monkeypatch):
    _raise_for(monkeypatch, {1})
    out = tmp_path / "run"
    assert _run(out, "--set", "engine.max_failure_share=0.2") == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "1 of 3 client updates failed" in summary["reason"]


def test_report_shows_the_status(tmp_path, monkeypatch, capsys):
    _raise_for(monkeypatch, None)
    out = tmp_path / "run"
    _run(out)
    capsys.readouterr()
    assert cli.main(["report", str(out)]) == 0
    assert "failed" in capsys.readouterr().out


# --- 3. run folders and resume -------------------------------------------------------------

def test_out_at_a_nonempty_folder_needs_overwrite(tmp_path):
    out = tmp_path / "run"
    assert _run(out, rounds=1) == 0
    before = _folder_digest(out)
    assert _run(out, rounds=1) == 2
    assert _folder_digest(out) == before
    assert _run(out, "--overwrite", rounds=1) == 0


def test_out_folder_of_other_files_is_never_overwritten(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert _run(out, rounds=1) == 2
    assert _run(out, "--overwrite", rounds=1) == 2
    assert (out / "thesis.tex").read_text() == "precious" and len(list(out.iterdir())) == 1


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_out_that_is_or_is_under_a_file(tmp_path, capsys, where):
    f = tmp_path / "f"
    f.write_text("x")
    assert _run(f if where == "file" else f / "run", rounds=1) == 2
    assert "is a file" in capsys.readouterr().err or "which is a file" in capsys.readouterr().err


def test_resume_without_checkpoint_is_refused(tmp_path):
    out = tmp_path / "run"
    assert _run(out, rounds=1) == 0
    (out / "checkpoint.pt").unlink()
    before = _folder_digest(out)
    assert cli.main(["run", "--resume", "--out", str(out), "--quiet"]) == 2
    assert _folder_digest(out) == before


def test_resume_refuses_identity_changes_and_allows_rounds(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out, rounds=1) == 0
    before = _folder_digest(out)
    assert cli.main(["run", "--resume", "--out", str(out), "--set", "fedavg.lr=0.5", "--quiet"]) == 2
    assert "fedavg.lr" in capsys.readouterr().err
    assert _folder_digest(out) == before
    assert cli.main(["run", "--resume", "--out", str(out), "--rounds", "2", "--quiet"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_failed_resume_leaves_the_folder_untouched(tmp_path):
    out = tmp_path / "run"
    assert _run(out, rounds=1) == 0
    ck = out / "checkpoint.pt"
    raw = bytearray(ck.read_bytes())
    raw[-5] ^= 0xFF
    ck.write_bytes(bytes(raw))
    before = _folder_digest(out)
    assert cli.main(["run", "--resume", "--out", str(out), "--rounds", "2", "--quiet"]) == 2
    assert _folder_digest(out) == before


def test_resume_with_an_edited_config_toml_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(out, rounds=1) == 0
    import tomllib

    import tomli_w

    cfg = out / "config.toml"
    doc = tomllib.loads(cfg.read_text())
    doc["fedavg"]["lr"] = 0.07
    cfg.write_text(tomli_w.dumps(doc))
    assert cli.main(["run", "--resume", "--out", str(out), "--rounds", "2", "--quiet"]) == 2
    assert "fedavg.lr" in capsys.readouterr().err


def test_docs_list_exactly_the_resumable_keys():
    from featherfl.experiment import RESUMABLE_KEYS

    doc = (Path(__file__).resolve().parents[1] / "docs" / "runs.md").read_text()
    section = doc.split("## What a resume may change")[1].split("##")[0]
    import re

    listed = set(re.findall(r"`([a-z_.]+)`", section.split("(and the")[0]))
    assert listed == set(RESUMABLE_KEYS)
