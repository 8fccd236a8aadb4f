"""The generic featherfl ClientApp: one SuperNode = one featherfl client.

It answers the three message types of :mod:`featherfl.engines.flower_engine`:

- ``query.featherfl_setup``: keep the run's resolved config in ``context.state``
  and report this node's ``partition-id`` / ``num-partitions`` (node config);
- ``train.<algorithm>``: decode the downlink, run the algorithm's client half on
  this node's partition, reply with the encoded uplink. This is
  :func:`featherfl.engines.base.run_client`, the function every engine calls. On an
  evaluation round of a method without a global model (FD) the message asks for the
  device's own evaluation too, which travels back in the same reply;
- ``evaluate.<algorithm>``: evaluate this client's own state (methods without a
  global model), for devices that did not train in the evaluation round.

The partition is the local engine's partition for the same client id: the node
runs :func:`featherfl.experiment.prepare_client` on the same config, which builds this
node's client half and its partition only (no server, no other client's data). Node config ``data-dir`` points at a local data
folder (``data.dir``) for datasets that are not bundled.

Client state is kept in ``context.state`` between messages (bytes of a
``torch.save`` of tensors and numbers, read back with ``weights_only=True``, as
checkpoints are); it never leaves the node.
"""

from __future__ import annotations

import io
import json
import time

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from featherfl.engines.flower_protocol import SETUP_ACTION, pack, unpack

STATE = "featherfl-state"
_CACHE: dict[tuple, object] = {}

app = ClientApp()


def _node_setting(context: Context, key: str, default=None):
    return context.node_config.get(key, default)


def _prepared(context: Context):
    """The node's PreparedClient (config -> its partition and client half), cached per process."""
    from featherfl.experiment import prepare_client
    from featherfl.schema import build_config

    st = context.state.config_records.get(STATE)
    if st is None or "config" not in st:
        raise RuntimeError("featherfl: this SuperNode received no setup message for the run")
    toml_text = str(st["config"])
    data_dir = str(_node_setting(context, "data-dir", "") or "")
    cid = _partition_id(context)
    key = (context.run_id, toml_text, data_dir, cid)
    if key not in _CACHE:
        overrides = [("data.dir", data_dir)] if data_dir else []
        _CACHE.clear()
        _CACHE[key] = prepare_client(build_config(toml_text, overrides), cid)
    return _CACHE[key]


def _partition_id(context: Context) -> int:
    pid = _node_setting(context, "partition-id")
    if pid is None:
        raise RuntimeError("featherfl: start the SuperNode with --node-config 'partition-id=N num-partitions=M'")
    return int(pid)


def _load_state(context: Context) -> dict:
    import torch

    st = context.state.config_records.get(STATE)
    if st is None or "client" not in st:
        return {}
    return torch.load(io.BytesIO(st["client"]), map_location="cpu", weights_only=True)


def _save_state(context: Context, state: dict) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    context.state.config_records[STATE]["client"] = buf.getvalue()


@app.query(SETUP_ACTION)
def setup(message: Message, context: Context) -> Message:
    """Keep the run's config; say which partition this node holds. Needs no torch (fast)."""
    _, info = unpack(message.content)
    context.state[STATE] = ConfigRecord({"config": info["config"]})
    parts = _node_setting(context, "num-partitions")
    return Message(pack(**{"partition-id": _partition_id(context), "num-partitions": int(parts) if parts is not None else None}), reply_to=message)


def train(message: Message, context: Context) -> Message:
    from featherfl.engines.base import run_client

    payload, info = unpack(message.content)
    prepared = _prepared(context)
    client = prepared.client
    state = _load_state(context)
    t = time.perf_counter()
    try:
        reply = run_client(client, int(info["round"]), payload, prepared.data, state, prepared.ctx.run_id)
    except Exception as e:  # reported like the local engine's failing client, not as a crash
        return Message(pack(error=f"error: {e.__class__.__name__}: {e}", seconds=time.perf_counter() - t), reply_to=message)
    seconds = time.perf_counter() - t
    metrics = None
    if info.get("evaluate"):  # an evaluation round of a method without a global model: saves a message
        ds = prepared.dataset
        metrics = json.dumps(client.evaluate(state, ds.test_x, ds.test_y))
    _save_state(context, state)
    return Message(pack(reply, seconds=seconds, metrics=metrics), reply_to=message)


def evaluate(message: Message, context: Context) -> Message:
    prepared = _prepared(context)
    state = _load_state(context)
    ds = prepared.dataset
    metrics = prepared.client.evaluate(state, ds.test_x, ds.test_y)
    _save_state(context, state)
    return Message(pack(metrics=json.dumps(metrics)), reply_to=message)


def _register() -> None:
    """Route ``train.<name>`` / ``evaluate.<name>`` of every registered algorithm."""
    from featherfl.algorithms.registry import names

    for name in names():
        if name.isidentifier():
            app.train(name)(train)
            app.evaluate(name)(evaluate)


_register()
