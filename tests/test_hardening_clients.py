"""Failing clients: dropout, stragglers past the deadline, clients raising mid-update,
duplicated and hostile replies, quorum. The round goes on with the rest and every
lost client is counted with its reason."""

import json
import time

import pytest
import torch

from featherfl import wire
from featherfl.cli import main
from featherfl.engines import local as local_engine
from featherfl.engines.base import ClientOutcome, dropped_clients, sample_clients
from featherfl.engines.local import LocalEngine
from featherfl.experiment import Experiment, prepare
from support.rows import all_rows


class Wrap:
    """A client half that delegates to the real one and misbehaves for chosen clients."""

    def __init__(self, inner, before=None, after=None):
        self.inner, self.before, self.after = inner, before, after
        self.ctx = inner.ctx

    def downlink_specs(self, rnd):
        return self.inner.downlink_specs(rnd)

    def update(self, rnd, down, data, state):
        if self.before:
            self.before(rnd, data.cid)
        up = self.inner.update(rnd, down, data, state)
        return self.after(rnd, data.cid, up) if self.after else up

    def evaluate(self, *a):
        return self.inner.evaluate(*a)


def _experiment(tmp_path, cfg_factory, **kw):
    cfg = cfg_factory(**kw)
    return Experiment(prepare(cfg), tmp_path / "run", progress=False)


def test_dropout_30_percent_counted_and_rounds_continue(tmp_path, cfg_factory):
    exp = _experiment(tmp_path, cfg_factory, clients=10, rounds=4, engine__dropout=0.3, fedavg__max_steps=2)
    s = exp.run()
    rows = all_rows(tmp_path / "run")
    expected = [len(dropped_clients(0, r, sample_clients(0, r, 10, 1.0), 0.3)) for r in range(1, 5)]
    assert [r["clients_dropped"] for r in rows] == expected
    assert sum(expected) > 0
    for r, n in zip(rows, expected):
        assert r["clients_ok"] == 10 - n and r["aggregated"]
        assert r["dropped_reasons"] == ({"dropout": n} if n else {})
        assert len(r["bytes_up_per_client"]) == 10 - n  # nothing came from the dropped
    assert s["rounds_completed"] == 4 and s["rounds_skipped"] == 0


class FakeClock:
    """Replaces the engine's clock: a straggler 'takes' seconds without the test waiting."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_straggler_past_deadline_dropped_deterministically(tmp_path, cfg_factory, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(local_engine, "time", clock)
    slow = {2: 30.0, 5: 9.9}  # seconds each client 'takes'

    def before(rnd, cid):
        clock.now += slow.get(cid, 0.5)

    exp = _experiment(tmp_path, cfg_factory, clients=6, rounds=2, engine__deadline=10.0, fedavg__max_steps=2)
    exp.engine.client = Wrap(exp.engine.client, before=before)
    exp.run()
    for r in all_rows(tmp_path / "run"):
        assert r["dropped_reasons"] == {"deadline": 1} and r["clients_ok"] == 5 and r["aggregated"]
        # the late reply arrived, so its bytes count: category "late", same size as an accepted reply
        assert r["bytes_up_per_client"]["2"] == r["bytes_up_per_client"]["5"] > 0
        assert r["bytes_by_category"]["up_late"] == r["bytes_up_per_client"]["2"]


def test_straggler_really_sleeping_is_dropped(tmp_path, cfg_factory):
    """The same through the real clock: one client sleeps well past a generous deadline."""

    def before(rnd, cid):
        if cid == 1:
            time.sleep(1.6)

    exp = _experiment(tmp_path, cfg_factory, clients=3, rounds=1, engine__deadline=0.8, fedavg__max_steps=1)
    exp.engine.client = Wrap(exp.engine.client, before=before)
    exp.run()
    (r,) = all_rows(tmp_path / "run")
    assert r["dropped_reasons"] == {"deadline": 1} and r["clients_ok"] == 2


def test_client_raising_mid_update_is_dropped_with_reason(tmp_path, cfg_factory):
    def after(rnd, cid, up):
        if cid in (0, 3):
            raise MemoryError("device ran out of memory half way")
        return up

    exp = _experiment(tmp_path, cfg_factory, clients=5, rounds=2, fedavg__max_steps=2)
    exp.engine.client = Wrap(exp.engine.client, after=after)
    s = exp.run()
    for r in all_rows(tmp_path / "run"):
        assert r["dropped_reasons"] == {"error": 2} and r["clients_ok"] == 3 and r["aggregated"]
    assert s["clients_dropped"] == 4


def test_hostile_replies_counted_per_reason_round_continues(tmp_path, cfg_factory):
    """Each client sends a differently broken reply; the honest ones are still aggregated."""
    from featherfl.algorithms.fedavg import WeightsUp

    def after(rnd, cid, up):
        w = up.weights.clone()
        if cid == 0:
            w[3] = float("nan")
        elif cid == 1:
            w = w.double()
        elif cid == 2:
            w = w[:-1]
        elif cid == 3:
            w[0] = 1e12
        elif cid == 4:
            return WeightsUp(w, 0)
        return WeightsUp(w, up.num_samples)

    exp = _experiment(tmp_path, cfg_factory, clients=8, rounds=2, fedavg__max_steps=2)
    exp.engine.client = Wrap(exp.engine.client, after=after)
    s = exp.run()
    for r in all_rows(tmp_path / "run"):
        assert r["rejected_reasons"] == {"non-finite": 1, "wrong-dtype": 1, "wrong-shape": 1, "out-of-range": 2}
        assert r["clients_rejected"] == 5 and r["clients_ok"] == 3 and r["aggregated"]
        assert r["bytes_by_category"]["up_rejected"] > 0
    assert s["clients_rejected"] == 10


class NoisyEngine(LocalEngine):
    """A transport that hands over extra copies, stale replies and foreign bytes."""

    def _execute(self, rnd, jobs):
        out = super()._execute(rnd, jobs)
        for cid, o in out.items():
            if o.reply is None:
                continue
            if cid == 0:
                o.duplicates = [o.reply, o.reply]
            elif cid == 1:
                o.reply = o.reply[:2] + bytes([1]) + (rnd + 7).to_bytes(4, "little") + o.reply[7:]  # another round
            elif cid == 2:
                o.reply = o.reply[:7] + (12345).to_bytes(4, "little") + o.reply[11:]  # another run
            elif cid == 3:
                o.reply = b"\x80\x04\x95" + bytes(40)  # a pickle, never unpickled
        out[4] = ClientOutcome(reply=b"x" * (self.max_bytes + 1))
        return out


def test_duplicates_other_round_other_run_and_oversized_rejected(tmp_path, cfg_factory):
    cfg = cfg_factory(clients=6, rounds=1, fedavg__max_steps=1, engine__max_payload_mb=0.2)
    p = prepare(cfg)
    ledger = wire.Ledger()
    eng = NoisyEngine(cfg, p.algorithm, p.client_data, ledger, p.ctx.run_id)
    before = {k: v.clone() for k, v in p.algorithm.global_model.state_dict().items()}
    stats = eng.run_round(1)
    assert stats.rejected_reasons == {"bad-magic": 1, "duplicate": 2, "oversized": 1, "wrong-round": 1, "wrong-run": 1}
    assert stats.clients_ok == 2 and stats.aggregated  # clients 0 (first copy) and 5
    after = p.algorithm.global_model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert ledger.round_totals(1)["bytes_by_category"]["up_rejected"] > 0


@pytest.mark.parametrize("policy,code", [("skip", 0), ("stop", 1)])
def test_quorum_fail_skip_logs_stop_exits_with_message(tmp_path, capsys, policy, code):
    out = tmp_path / policy
    argv = ["run", "--rounds", "3", "--clients", "5", "--out", str(out), "--quiet", "--set", "fedavg.max_steps=1"]
    argv += ["--set", "engine.dropout=0.9", "--set", "engine.min_replies=3", "--set", f"engine.on_quorum_fail={policy}", "--set", "engine.max_failed_rounds=3"]
    assert main(argv) == code
    err = capsys.readouterr().err
    rows = all_rows(out)
    if policy == "skip":
        assert len(rows) == 3 and all(not r["aggregated"] and "fewer than engine.min_replies=3" in r["skipped"] for r in rows)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["rounds_skipped"] == 3
    else:
        assert rows == [] and "run stopped" in err and "engine.min_replies=3" in err
        assert len(err.strip().splitlines()) == 1
