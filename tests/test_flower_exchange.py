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
    from featherfl.schema import build_config
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


class NodesGrid:
    """Two in-process SuperNodes that answer as featherfl's ClientApp does: the setup query, train
    messages (with the device's own evaluation when asked) and evaluate messages. ``no_fold`` nodes
    ignore the evaluation request (as a node that failed to evaluate would)."""

    def __init__(self, prepared, no_fold=()):
        self.p = prepared
        self.client = prepared.algorithm.make_client()
        self.nodes = {101: 0, 102: 1}
        self.states = {0: {}, 1: {}}
        self.no_fold = set(no_fold)
        self.sent: list[tuple[str, int, bool]] = []  # (message type, node, evaluation asked)
        self.pending: dict[str, object] = {}

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, msgs):
        ids = []
        for m in msgs:
            mid = f"m{len(self.sent)}"
            _, info = flower_engine.unpack(m.content)
            self.sent.append((m.metadata.message_type, m.metadata.dst_node_id, bool(info.get("evaluate"))))
            self.pending[mid] = m
            ids.append(mid)
        return ids

    def pull_messages(self, ids):
        import json

        from featherfl.engines.base import run_client

        out = []
        for mid in sorted(ids):
            m = self.pending.pop(mid)
            node = m.metadata.dst_node_id
            cid = self.nodes[node]
            payload, info = flower_engine.unpack(m.content)
            kind = m.metadata.message_type
            ds = self.p.dataset
            if kind == flower_engine.SETUP:
                content = flower_engine.pack(**{"partition-id": cid, "num-partitions": 2})
            elif kind.startswith("train."):
                reply = run_client(self.client, int(info["round"]), payload, self.p.client_data[cid], self.states[cid], self.p.ctx.run_id)
                metrics = None
                if info.get("evaluate") and node not in self.no_fold:
                    metrics = json.dumps(self.client.evaluate(self.states[cid], ds.test_x, ds.test_y))
                content = flower_engine.pack(reply, seconds=0.01, metrics=metrics)
            else:
                content = flower_engine.pack(metrics=json.dumps(self.client.evaluate(self.states[cid], ds.test_x, ds.test_y)))
            out.append(SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=mid, src_node_id=node), has_error=lambda: False, content=content))
        return out


@pytest.fixture
def task_identity(monkeypatch):
    """Flower stamps each Message with the run of the ServerApp process it is created in."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1)


def _flower_vs_local(tmp_path, algorithm, no_fold=()):
    import json

    from featherfl.schema import build_config
    from featherfl.experiment import Experiment, prepare

    over = [("algorithm", algorithm), ("clients", 2), ("rounds", 3), ("eval.every", 2), ("data.max_train", 200), ("data.max_test", 100),
            ("engine.threads", 1), ("engine.vectorize", "off"), *([("fd.local_steps", 5)] if algorithm == "fd" else [])]
    rows = {}
    grid = None
    for engine in ("local", "flower"):
        p = prepare(build_config(overrides=over + [("engine.name", engine)]))
        if engine == "flower":
            grid = NodesGrid(p, no_fold)
            with flower_engine.bind(grid, node_wait=5, reply_timeout=30):
                Experiment(p, tmp_path / engine, progress=False).run()
        else:
            Experiment(p, tmp_path / engine, progress=False).run()
        rows[engine] = [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "wall_seconds")} for line in (tmp_path / engine / "metrics.jsonl").read_text().splitlines()]
    return rows, grid


def test_fd_evaluation_rides_on_the_train_reply(tmp_path, task_identity):
    """FD evaluates every device's own model on evaluation rounds (2 and the last, 3): the train message asks
    for it and no separate evaluate message is sent; the figures equal the local engine's."""
    rows, grid = _flower_vs_local(tmp_path, "fd")
    assert rows["flower"] == rows["local"]
    train = [(t, n, ev) for t, n, ev in grid.sent if t == "train.fd"]
    assert [ev for _, _, ev in train] == [False, False, True, True, True, True]  # rounds 1, 2, 3 x two nodes
    assert not any(t == "evaluate.fd" for t, _, _ in grid.sent)


def test_a_node_whose_train_reply_lacks_its_evaluation_is_asked_separately(tmp_path, task_identity):
    rows, grid = _flower_vs_local(tmp_path, "fd", no_fold={102})
    assert rows["flower"] == rows["local"]
    assert [n for t, n, _ in grid.sent if t == "evaluate.fd"] == [102, 102]  # rounds 2 and 3, that node only


def test_methods_with_a_global_model_never_ask_nodes_to_evaluate(tmp_path, task_identity):
    rows, grid = _flower_vs_local(tmp_path, "fedavg")
    assert rows["flower"] == rows["local"]
    assert not any(ev for _, _, ev in grid.sent) and not any(t.startswith("evaluate.") for t, _, _ in grid.sent)


@pytest.mark.parametrize("raw", ['{"accuracy": "high"}', "[1, 2]", "not json", '{"accuracy": 0.5, "x": {"nested": 1}}'])
def test_malformed_node_metrics_are_ignored(raw):
    assert flower_engine._metrics({"metrics": raw}) is None
    assert flower_engine._metrics({}) is None
    assert flower_engine._metrics({"metrics": '{"accuracy": 0.5, "loss": null}'}) == {"accuracy": 0.5, "loss": None}
