"""A peer for featherfl's SecAgg+: Flower's own (``SecAggPlusWorkflow`` with ``secaggplus_mod``,
flwr 1.41) on the same number of clients, neighbours and vector length, beside featherfl's
protocol (``tests/support/secagg_simulate.py``), measured in one run.

Flower: one round of its legacy FedAvg strategy with the SecAgg+ fit workflow, in its simulation
runtime (Ray backend, ClientApps in Ray actors), or with ``--inprocess`` driven by a ``Grid`` that
calls each node's ClientApp (with ``secaggplus_mod``) in this process, copying every message both
ways as a transport would: Flower's own workflow and mod without Ray (then the server's CPU seconds
are the workflow's CPU outside ``send_and_receive``). Server seconds: the workflow's time minus the time it
spent waiting in ``grid.send_and_receive`` (the clients' work and the transport), i.e. the
server's own protocol work. Bytes per client: ``count_bytes()`` of every reply the
client's ``secaggplus_mod`` produced, summed over the records of each message (Flower counts no wire
bytes; protobuf framing is not in it).
featherfl: the same n, k and vector length with 32-bit words (Flower's default modulus is 2^32),
bytes as encoded on the wire.

    .venv/bin/python benchmarks/secagg_flower_peer.py --sizes 10 100
    .venv/bin/python benchmarks/secagg_flower_peer.py --inprocess --sizes 10 100 1000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

from featherfl.secagg import protocol  # noqa: E402
from support import secagg_simulate as simulate  # noqa: E402  (tests/support: the round simulator the tests use)


def _value_bytes(v) -> int:
    if isinstance(v, (bytes, str)):
        return len(v.encode() if isinstance(v, str) else v)
    if isinstance(v, list):
        return sum(_value_bytes(x) for x in v)
    return 1 if isinstance(v, bool) else 8


def _size(content) -> int:
    """Bytes of a Flower message's records, counted as Flower's ``count_bytes`` counts them (keys plus
    values; 8 bytes per number). Flower 1.41's own ``ConfigRecord.count_bytes`` fails on an empty list,
    which SecAgg+ messages carry, so config records are counted here the same way."""
    total = 0
    for record in content.values():
        if hasattr(record, "items") and not hasattr(record, "to_numpy_ndarrays"):
            total += sum(len(k) + _value_bytes(v) for k, v in record.items())
        else:
            total += record.count_bytes()
    return total


def local_grid(client_app, n: int):
    """A Flower ``Grid`` that answers every message by calling the ClientApp in this process, node
    after node, each node keeping its own ``Context`` (where ``secaggplus_mod`` keeps its state):
    Flower's own workflow and mod, without the simulation runtime's Ray actors and transport."""
    from copy import deepcopy
    from types import SimpleNamespace
    from uuid import uuid4

    from flwr.common import Context, Message, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.serverapp.grid.grid import Grid
    from flwr.supercore.task_identity import TaskIdentity

    # who is speaking: the server, except while a node's ClientApp answers
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID

    class LocalGrid(Grid):
        def __init__(self):
            self._run = SimpleNamespace(run_id=1)  # the one field the legacy strategy reads
            self.nodes = list(range(1, n + 1))
            self.contexts = {i: Context(run_id=1, node_id=i, node_config={}, state=RecordDict(), run_config={}) for i in self.nodes}
            self.inbox: dict[str, Message] = {}

        def set_run(self, run):
            self._run = run

        @property
        def run(self):
            return self._run

        def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
            return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

        def get_node_ids(self):
            return list(self.nodes)

        def push_messages(self, messages):
            ids = []
            for msg in messages:
                msg.metadata.__dict__["_message_id"] = str(uuid4())
                node = msg.metadata.dst_node_id
                TaskIdentity.node_id = node
                try:
                    # copies both ways, as a transport would: the mod alters the records it receives
                    self.inbox[msg.metadata.message_id] = deepcopy(client_app(deepcopy(msg), self.contexts[node]))
                finally:
                    TaskIdentity.node_id = SUPERLINK_NODE_ID
                ids.append(msg.metadata.message_id)
            return ids

        def pull_messages(self, message_ids):
            return [self.inbox.pop(i) for i in message_ids if i in self.inbox]

        def send_and_receive(self, messages, *, timeout=None):
            return list(self.pull_messages(self.push_messages(messages)))

    return LocalGrid()


def flower_round(n: int, dim: int, num_shares: int, threshold: int, inprocess: bool = False) -> dict:
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.simulation import run_simulation

    log = Path(tempfile.mkdtemp()) / "bytes.txt"
    os.environ["FEATHERFL_PEER_LOG"] = str(log)
    result: dict = {}

    class Vector(NumPyClient):
        def fit(self, parameters, config):
            return [np.random.default_rng(0).uniform(-1, 1, dim)], 1, {}

    def count(msg, ctx, call_next):
        reply = call_next(msg, ctx)
        with open(os.environ["FEATHERFL_PEER_LOG"], "a") as f:
            f.write(f"{msg.metadata.dst_node_id} {_size(reply.content)} {_size(msg.content)}\n")
        return reply

    client_app = ClientApp(client_fn=lambda context: Vector().to_client(), mods=[count, secaggplus_mod])
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context):
        strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n, initial_parameters=ndarrays_to_parameters([np.zeros(dim)]))
        ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=1), strategy=strategy)
        waited = [0.0, 0.0]  # wall, CPU
        real = grid.send_and_receive

        def timed(*a, **kw):
            t0, c0 = time.perf_counter(), time.process_time()
            out = real(*a, **kw)
            waited[0] += time.perf_counter() - t0
            waited[1] += time.process_time() - c0
            return out

        grid.send_and_receive = timed
        workflow = SecAggPlusWorkflow(num_shares=num_shares, reconstruction_threshold=threshold)

        def fit_workflow(g, c):
            t0, c0 = time.perf_counter(), time.process_time()
            waited[:] = [0.0, 0.0]
            workflow(g, c)
            result["workflow_s"] = time.perf_counter() - t0
            result["workflow_cpu"] = time.process_time() - c0
            result["waited_s"], result["waited_cpu"] = waited

        DefaultWorkflow(fit_workflow=fit_workflow)(grid, ctx)

    t0 = time.perf_counter()
    if inprocess:
        from flwr.common import Context, RecordDict

        main(local_grid(client_app, n), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    else:
        run_simulation(server_app, client_app, num_supernodes=n, backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2, "include_dashboard": False}})
    result["wall_s"] = time.perf_counter() - t0
    up: dict[str, int] = {}
    down: dict[str, int] = {}
    for line in log.read_text().splitlines():
        node, u, d = line.split()
        up[node] = up.get(node, 0) + int(u)
        down[node] = down.get(node, 0) + int(d)
    result["server_s"] = result["workflow_s"] - result["waited_s"]
    # in process, the clients' work is this process's CPU inside send_and_receive: the rest is the server's
    result["server_cpu"] = result["workflow_cpu"] - result["waited_cpu"] if inprocess else None
    result["clients_cpu"] = result["waited_cpu"] if inprocess else None
    result["up"] = statistics.mean(up.values())
    result["down"] = statistics.mean(down.values())
    result["clients_seen"] = len(up)
    return result


def ours(n: int, dim: int, k: int) -> dict:
    rng = np.random.default_rng(0)
    v = {c: rng.uniform(-1, 1, dim) for c in range(n)}
    out = simulate.run_round(v, neighbours=k, ring_bits=32, fraction_bits=16)
    return {"server_s": out.server_seconds, "server_cpu": out.server_cpu_seconds, "clients_cpu": out.client_seconds, "up": statistics.mean(out.bytes_up.values()), "down": statistics.mean(out.bytes_down.values()), "k": len(out.server.graph[0]), "t": out.server.t}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--dim", type=int, default=111)
    ap.add_argument("--inprocess", action="store_true", help="drive Flower's workflow with its ClientApps called in this process (no Ray, no transport)")
    a = ap.parse_args()
    for n in a.sizes:
        k = protocol.neighbour_count(n, 0)
        t = protocol.threshold_for(k, 0.5)
        mine = ours(n, a.dim, k)
        peer = flower_round(n, a.dim, num_shares=k + 1, threshold=t, inprocess=a.inprocess)  # Flower's share count includes the client itself
        cpu = f", server CPU {peer['server_cpu']:.3f} s, clients CPU {peer['clients_cpu']:.2f} s" if peer["server_cpu"] is not None else ""
        print(f"n={n} d={a.dim} k={k} t={t}: featherfl server {mine['server_s']:.3f} s (CPU {mine['server_cpu']:.3f} s), clients {mine['clients_cpu']:.2f} s, up {mine['up']:.0f} B, down {mine['down']:.0f} B | "
              f"flower server {peer['server_s']:.3f} s{cpu} (workflow {peer['workflow_s']:.2f} s, waiting {peer['waited_s']:.2f} s, run {peer['wall_s']:.1f} s), "
              f"up {peer['up']:.0f} B, down {peer['down']:.0f} B, clients {peer['clients_seen']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
