"""The Flower engine's exchange: push, pull at a short interval, progress lines, a bounded wait."""

import logging
from types import SimpleNamespace

import pytest

pytest.importorskip("flwr")

from featherfl.engines import flower_engine  # noqa: E402


class FakeGrid:
    """Replies become available after ``ready[i]`` pulls; never for ``None``."""

    def __init__(self, ready):
        self.ready = ready
        self.pulls = 0

    def push_messages(self, msgs):
        return [f"m{i}" for i in range(len(msgs))]

    def pull_messages(self, ids):
        self.pulls += 1
        out = []
        for i, r in enumerate(self.ready):
            if r is not None and f"m{i}" in ids and self.pulls >= r:
                out.append(SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=f"m{i}", src_node_id=i)))
        return out


def test_all_replies_arrive_without_flowers_3s_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(flower_engine.time, "sleep", slept.append)
    grid = FakeGrid([1, 3, 2])
    replies = flower_engine.exchange(grid, ["a", "b", "c"], timeout=60, what="round 1")
    assert sorted(r.metadata.src_node_id for r in replies) == [0, 1, 2]
    assert grid.pulls == 3 and sum(slept) < 0.2  # two short pauses, not 2 x 3 s


def test_a_missing_reply_ends_at_the_timeout_with_progress_lines(monkeypatch, caplog):
    clock = {"t": 0.0}
    monkeypatch.setattr(flower_engine.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(flower_engine.time, "sleep", lambda s: clock.__setitem__("t", clock["t"] + s))
    grid = FakeGrid([1, None])
    with caplog.at_level(logging.INFO, logger="flwr.featherfl"):
        replies = flower_engine.exchange(grid, ["a", "b"], timeout=35, what="round 4")
    assert [r.metadata.src_node_id for r in replies] == [0]
    assert 35 <= clock["t"] <= 36.5
    lines = [r.getMessage() for r in caplog.records if "round 4" in r.getMessage()]
    assert len(lines) == 3 and "1 of 2 replies" in lines[0]  # at about 10, 20 and 30 s: no long silence


def test_no_messages_no_wait():
    assert flower_engine.exchange(FakeGrid([]), [], timeout=5, what="x") == []


def test_waiting_for_supernodes_prints_progress_and_names_the_missing_partitions(monkeypatch, caplog):
    """No SuperNode connects: a progress line every 10 s, then the missing partitions and the command that serves them."""
    from featherfl import wire
    from featherfl.config import build_config
    from featherfl.experiment import prepare

    cfg = build_config(overrides=[("clients", 2), ("engine.name", "flower"), ("data.max_train", 100)])
    p = prepare(cfg)
    clock = {"t": 0.0}
    monkeypatch.setattr(flower_engine.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(flower_engine.time, "sleep", lambda s: clock.__setitem__("t", clock["t"] + s))
    grid = SimpleNamespace(get_node_ids=lambda: [])
    engine = flower_engine.FlowerEngine(cfg, p.algorithm, p.client_data, wire.Ledger(), p.ctx.run_id, grid=grid, node_wait=25)
    with caplog.at_level(logging.INFO, logger="flwr.featherfl"):
        engine._discover({0, 1})
    assert 25 <= clock["t"] <= 26
    waiting = [r.getMessage() for r in caplog.records if "waiting for SuperNodes" in r.getMessage()]
    assert len(waiting) == 2 and all("0 of 2 partitions connected" in w for w in waiting)  # at about 10 and 20 s
    (missing,) = [r.getMessage() for r in caplog.records if "no SuperNode holds" in r.getMessage()]
    assert "partition(s) [0, 1]" in missing and "--node-config 'partition-id=0 num-partitions=2'" in missing
