"""The Flower engine against the local engine without a SuperLink: a Grid that hands each message
to featherfl's real ClientApp, one Context per node kept between messages (as a SuperNode keeps
it), copying messages both ways as a transport would.

What this shows in seconds that the deployment tests show in minutes: the client state that a
method or wrapper keeps between rounds (compression's error-feedback residuals, FD's device
models) lives on the node, in ``context.state``, and the rows equal the local engine's.
"""

from copy import deepcopy
from uuid import uuid4

import pytest

pytest.importorskip("flwr")

from support.rows import metric_rows  # noqa: E402

from featherfl.engines.flower_engine import bind  # noqa: E402
from featherfl.experiment import run_experiment  # noqa: E402
from featherfl.schema import build_config  # noqa: E402

CLIENTS = 3
BASE = [("dataset", "digits"), ("clients", CLIENTS), ("rounds", 3), ("seed", 4), ("engine.threads", 1), ("engine.vectorize", "off"), ("log.plots", False), ("data.max_train", 300)]


@pytest.fixture(autouse=True)
def _speaking_as_the_server(monkeypatch):
    """Flower stamps each new Message with the process's task identity (a SuperLink or SuperNode
    sets it): here the server, except while a node's ClientApp answers."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", SUPERLINK_NODE_ID)):
        monkeypatch.setattr(TaskIdentity, name, value)


class InProcessGrid:
    """The Grid surface the Flower engine uses, answering from featherfl's ClientApp in this process."""

    def __init__(self, nodes: int):
        from flwr.app import Context, RecordDict

        self.contexts = {
            100 + i: Context(run_id=1, node_id=100 + i, node_config={"partition-id": i, "num-partitions": nodes}, state=RecordDict(), run_config={})
            for i in range(nodes)
        }
        self.inbox: dict = {}
        self.messages = 0

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        from featherfl.flower_app.client_app import app

        ids = []
        for msg in messages:
            mid = str(uuid4())
            msg.metadata.__dict__["_message_id"] = mid
            node = msg.metadata.dst_node_id
            from flwr.common.constant import SUPERLINK_NODE_ID
            from flwr.supercore.task_identity import TaskIdentity

            TaskIdentity.node_id = node
            try:
                reply = app(deepcopy(msg), self.contexts[node])
            finally:
                TaskIdentity.node_id = SUPERLINK_NODE_ID
            self.inbox[mid] = deepcopy(reply)
            self.messages += 1
            ids.append(mid)
        return ids

    def pull_messages(self, message_ids):
        return [self.inbox.pop(i) for i in list(message_ids) if i in self.inbox]


def _run(tmp_path, name, sets, grid=None):
    cfg = build_config(overrides=BASE + sets + [("engine.name", "flower" if grid else "local")])
    if grid is None:
        out, summary = run_experiment(cfg, tmp_path / name)
    else:
        with bind(grid, node_wait=5, reply_timeout=60):
            out, summary = run_experiment(cfg, tmp_path / name)
    assert summary["status"] == "completed", summary
    return metric_rows(out)


@pytest.mark.parametrize(
    "sets",
    [
        [("algorithm", "fedavg"), ("compress.method", "topk"), ("compress.ratio", 0.02), ("fedavg.local_epochs", 1)],  # residuals on the node
        [("algorithm", "fd"), ("fd.local_steps", 20)],  # device models on the node
    ],
    ids=["topk-error-feedback", "fd"],
)
def test_state_lives_on_the_node_and_rows_equal_the_local_engine(tmp_path, sets):
    grid = InProcessGrid(CLIENTS)
    remote = _run(tmp_path, "flower", sets, grid)
    local = _run(tmp_path, "local", sets)
    assert len(remote) == len(local) == 3
    for r, l in zip(remote, local):
        for key in ("bytes_up", "bytes_down", "bytes_by_category", "clients_ok", "clients_dropped", "clients_rejected"):
            assert r[key] == l[key], (key, r[key], l[key])
        assert r["accuracy"] == pytest.approx(l["accuracy"], abs=1e-6)
    # the state that carried the rows from round to round is on the nodes, not in the server process
    from featherfl.flower_app.client_app import STATE, _load_state

    for ctx in grid.contexts.values():
        assert STATE in ctx.state.config_records and "client" in ctx.state.config_records[STATE]
        assert _load_state(ctx), "each node kept a non-empty client state between messages"


def test_without_the_node_state_the_residuals_are_lost_and_the_rows_differ(tmp_path):
    """The check above can fail: a node that forgets its state between messages (a fresh Context
    each time) drops the error-feedback residuals, and the uplink is no longer the local engine's."""
    sets = [("algorithm", "fedavg"), ("compress.method", "topk"), ("compress.ratio", 0.02), ("fedavg.local_epochs", 1)]

    class Forgetful(InProcessGrid):
        def push_messages(self, messages):
            from flwr.app import RecordDict

            for ctx in self.contexts.values():
                kept = ctx.state.config_records.get("featherfl-state")
                ctx.state = RecordDict()
                if kept is not None:  # keep the run's config (setup), drop the client state
                    from flwr.app import ConfigRecord

                    ctx.state["featherfl-state"] = ConfigRecord({"config": kept["config"]})
            return super().push_messages(messages)

    remote = _run(tmp_path, "flower", sets, Forgetful(CLIENTS))
    local = _run(tmp_path, "local", sets)
    assert [r["accuracy"] for r in remote] != [l["accuracy"] for l in local]
