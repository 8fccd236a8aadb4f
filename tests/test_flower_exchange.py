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
