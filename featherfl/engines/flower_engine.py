"""The Flower engine: clients are Flower SuperNodes, reached through a ServerApp's ``Grid``.

Why Flower: it is the deployment runtime of the field (SuperLink, SuperNodes, TLS,
node authentication), so featherfl writes no networking of its own. This engine
runs inside the generic ServerApp (:mod:`featherfl.flower_app.server_app`), which
``flwr run`` starts; the round logic (sampling, dropout, decoding and validation,
the byte ledger, the quorum) stays in :class:`~featherfl.engines.base.Engine`, so a
Flower run counts the same bytes as the local engine.

Protocol (three message types, each sent with ``exchange``: push, then pull replies at a
short interval, logging progress every ``PROGRESS_EVERY`` s, until all arrived or the timeout):

``query.featherfl_setup``   the resolved config (TOML) to every new node; the node
                            answers with its ``partition-id`` / ``num-partitions``
                            (node config), so the server knows which SuperNode is
                            which featherfl client id.
``train.<algorithm>``       one encoded downlink payload (``wire.encode`` bytes, raw,
                            see :mod:`featherfl.engines.flower_protocol`); the reply
                            holds the encoded uplink bytes the same way.
``evaluate.<algorithm>``    methods without a global model: each node evaluates its
                            own client state on its copy of the test split.

Client state stays on the node (``context.state``), as it would on a device: it
never crosses the network, so it is not in the server's checkpoints either.

Bounded waiting: a round waits at most ``node_wait`` seconds for the SuperNodes of
its sampled clients to appear and at most ``reply_timeout`` seconds for replies;
clients it could not reach count as dropped ("no-reply"), and the quorum rule
(``engine.min_replies`` / ``engine.on_quorum_fail``) decides what happens next.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any, Iterator

from featherfl.config import ConfigError
from featherfl.engines.base import ClientFailure, ClientOutcome, Engine, evaluates
from featherfl.engines.flower_protocol import SETUP, evaluate_type, pack, train_type, unpack

LOG = logging.getLogger("flwr.featherfl")  # a child of Flower's logger, so `flwr log` shows these lines

#: Seconds between "still waiting" lines in the ServerApp log (no long silences).
PROGRESS_EVERY = 10.0
#: Reply polling: first pull after this many seconds, backing off to POLL_MAX. Flower's own
#: ``send_and_receive`` sleeps 3 s between pulls, which adds up to 3 s to every round trip.
POLL_FIRST, POLL_MAX = 0.05, 1.0


def exchange(grid, msgs: list, timeout: float, what: str) -> list:
    """Push ``msgs`` and pull their replies until all arrived or ``timeout`` s passed."""
    if not msgs:
        return []
    ids = set(grid.push_messages(msgs))
    n = len(ids)
    start = time.monotonic()
    end, next_log, pause = start + timeout, start + PROGRESS_EVERY, POLL_FIRST
    replies: list = []
    while ids:
        got = list(grid.pull_messages(ids))
        replies.extend(got)
        ids.difference_update(m.metadata.reply_to_message_id for m in got)
        now = time.monotonic()
        if not ids or now >= end:
            break
        if now >= next_log:
            LOG.info("featherfl: %s: %s of %s replies after %.0fs (waiting up to %.0fs)", what, len(replies), n, now - start, timeout)
            next_log = now + PROGRESS_EVERY
        time.sleep(min(pause, max(end - now, 0.0)))
        pause = min(pause * 1.5, POLL_MAX)
    return replies

_BINDING: dict[str, Any] = {}


@contextlib.contextmanager
def bind(grid, node_wait: float = 60.0, reply_timeout: float = 300.0) -> Iterator[None]:
    """Make ``grid`` the one FlowerEngines created inside this block talk through."""
    _BINDING.update(grid=grid, node_wait=node_wait, reply_timeout=reply_timeout)
    try:
        yield
    finally:
        _BINDING.clear()


def _metrics(info: dict) -> dict | None:
    """A node's evaluation (a JSON object of numbers or nulls), or None when absent or malformed."""
    try:
        m = json.loads(str(info["metrics"]))
    except (KeyError, ValueError):
        return None
    if not isinstance(m, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, (int, float))) for k, v in m.items()):
        return None
    return m


class FlowerEngine(Engine):
    def __init__(self, *args, grid=None, node_wait: float | None = None, reply_timeout: float | None = None, **kw):
        super().__init__(*args, **kw)
        self.grid = grid if grid is not None else _BINDING.get("grid")
        if self.grid is None:
            raise ConfigError(
                "config key 'engine.name': 'flower' runs inside a Flower ServerApp; start it with "
                "`flwr run flower/ <superlink>` (see docs/deployment.md)"
            )
        self.node_wait = float(node_wait if node_wait is not None else _BINDING.get("node_wait", 60.0))
        self.reply_timeout = float(reply_timeout if reply_timeout is not None else _BINDING.get("reply_timeout", 300.0))
        self.algorithm_name = self.cfg["algorithm"]
        self.config_toml = self.cfg.to_toml()
        self.node_of: dict[int, int] = {}  # featherfl client id -> Flower node id
        self.seen: set[int] = set()  # node ids that answered the setup query (accepted or not)
        self.folded: dict[int, dict] = {}  # client id -> its own evaluation, sent with this round's train reply

    # --- which SuperNode is which client -------------------------------------------
    def _setup(self, node_ids: list[int], timeout: float) -> None:
        from flwr.app import Message

        msgs = [Message(pack(config=self.config_toml), dst_node_id=n, message_type=SETUP, ttl=max(timeout, 1.0)) for n in node_ids]
        for reply in exchange(self.grid, msgs, timeout, "setup query to new SuperNodes"):
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.seen.add(node)
                LOG.warning("SuperNode %s failed the featherfl setup: %s", node, reply.error.reason)
                continue
            _, info = unpack(reply.content)
            self.seen.add(node)
            pid, parts = info.get("partition-id"), info.get("num-partitions")
            if parts != self.cfg["clients"] or not isinstance(pid, int) or not 0 <= pid < self.cfg["clients"]:
                LOG.warning(
                    "SuperNode %s has node config partition-id=%s num-partitions=%s but this run has clients=%s; ignoring it",
                    node, pid, parts, self.cfg["clients"],
                )
                continue
            if pid in self.node_of and self.node_of[pid] != node:
                LOG.warning("SuperNodes %s and %s both claim partition-id=%s; keeping %s", self.node_of[pid], node, pid, self.node_of[pid])
                continue
            self.node_of[pid] = node

    def _discover(self, wanted: set[int]) -> None:
        """Map new SuperNodes to client ids, waiting up to ``node_wait`` s for the wanted ones."""
        deadline = time.monotonic() + self.node_wait
        next_log = time.monotonic() + PROGRESS_EVERY
        while True:
            alive = set(self.grid.get_node_ids())
            for cid, node in list(self.node_of.items()):
                if node not in alive:  # gone (e.g. restarted with a new node id): its partition is free again
                    LOG.warning("SuperNode %s (partition %s) is no longer connected", node, cid)
                    del self.node_of[cid]
            known = set(self.node_of.values())
            new = sorted(n for n in alive if n not in self.seen and n not in known)
            left = deadline - time.monotonic()
            if new:
                self._setup(new, timeout=max(left, 5.0))
            if wanted <= set(self.node_of) or time.monotonic() >= deadline:
                break
            if time.monotonic() >= next_log:
                LOG.info("featherfl: waiting for SuperNodes: %s of %s partitions connected (%.0fs left)", len(wanted & set(self.node_of)), len(wanted), deadline - time.monotonic())
                next_log = time.monotonic() + PROGRESS_EVERY
            time.sleep(0.5)
        missing = sorted(wanted - set(self.node_of))
        if missing:
            hint = " ".join(f"'partition-id={c} num-partitions={self.cfg['clients']}'" for c in missing[:3])
            LOG.warning(
                "waited %.0fs: no SuperNode holds partition(s) %s; they count as dropped this round. "
                "Start them with flower-supernode ... --node-config %s",
                self.node_wait, missing, hint,
            )

    # --- the round ---------------------------------------------------------------------
    def _execute(self, rnd, jobs):
        from flwr.app import Message

        self._discover(set(jobs))
        # methods without a global model evaluate every device's own state: on an evaluation round the
        # device does it right after training, in the same ClientApp process (one message, not two)
        fold = self.training_exchange and not self.algorithm.has_global_model and evaluates(self.cfg, rnd)
        if self.training_exchange:
            self.folded = {}
        msgs, cid_of = [], {}
        for cid, down in sorted(jobs.items()):
            node = self.node_of.get(cid)
            if node is None:
                continue
            cid_of[node] = cid
            msgs.append(
                Message(pack(down, round=rnd, cid=cid, evaluate=True if fold else None), dst_node_id=node, message_type=train_type(self.algorithm_name), group_id=str(rnd), ttl=self.reply_timeout)
            )
        out: dict[int, ClientOutcome] = {}
        if not msgs:
            return out
        t = time.monotonic()
        replies = exchange(self.grid, msgs, self.reply_timeout, f"round {rnd}")
        LOG.info("featherfl: round %s: %s of %s SuperNodes replied in %.1fs", rnd, len(replies), len(msgs), time.monotonic() - t)
        for reply in replies:
            cid = cid_of.get(reply.metadata.src_node_id)
            if cid is None:
                continue
            if reply.has_error():
                out[cid] = ClientOutcome.raised(ClientFailure.from_reason(reply.error.reason))
                continue
            payload, info = unpack(reply.content)
            seconds = float(info.get("seconds", 0.0))
            if info.get("error_type"):
                out[cid] = ClientOutcome.raised(ClientFailure(str(info["error_type"]), str(info.get("error_message", ""))), seconds)
            else:
                out[cid] = ClientOutcome(reply=payload, seconds=seconds)
                if fold and (metrics := _metrics(info)) is not None:
                    self.folded[cid] = metrics
        return out

    def client_states(self):
        return {}  # held by the SuperNodes themselves

    def load_client_states(self, states):
        if states:
            LOG.warning("resuming on Flower: client states live on the SuperNodes and are not restored from the checkpoint")

    def evaluate_clients(self, x, y):
        """Each node evaluates its own state on its own copy of the test split (the same split: same config)."""
        from flwr.app import Message

        self._discover(set(range(self.cfg["clients"])))
        # devices that trained this round already sent their evaluation with the train reply
        res: dict[int, dict] = dict(self.folded)
        self.folded = {}
        nodes = [n for c, n in self.node_of.items() if c not in res]
        msgs = [Message(pack(), dst_node_id=n, message_type=evaluate_type(self.algorithm_name), ttl=self.reply_timeout) for n in nodes]
        cid_of = {n: c for c, n in self.node_of.items()}
        for reply in exchange(self.grid, msgs, self.reply_timeout, "evaluation") if msgs else []:
            if reply.has_error():
                LOG.warning("evaluation failed on SuperNode %s: %s", reply.metadata.src_node_id, reply.error.reason)
                continue
            _, info = unpack(reply.content)
            metrics = _metrics(info)
            if metrics is None:
                LOG.warning("SuperNode %s sent an evaluation that is not a JSON object of metrics; ignored", reply.metadata.src_node_id)
                continue
            res[cid_of[reply.metadata.src_node_id]] = metrics
        if not res:
            raise RuntimeError("no SuperNode answered the evaluation request")
        return dict(sorted(res.items()))
