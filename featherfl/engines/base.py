"""What every engine does the same way: sample clients, encode and count payloads,
drop replies that come late or fail validation, enforce the quorum, aggregate.

Subclasses only say *where* client code runs (``_execute``): in-process, in Ray
actors, or on Flower SuperNodes. The client side is :func:`run_client`, the same
function in every engine, so bytes and results match across engines.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import featherfl.wire as wire
from featherfl.algorithms.base import Algorithm, ClientData, ClientHalf
from featherfl.engines.sampling import CohortSampler
from featherfl.seeding import derive_seed


MAX_SETUP_EXCHANGES = 8


def evaluates(cfg, rnd: int) -> bool:
    """Whether round ``rnd`` ends with an evaluation: every ``eval.every`` rounds and the last one.
    The one schedule the round loop and the Flower engine (which folds a device's evaluation into
    its training reply on those rounds) both follow."""
    return rnd % cfg["eval.every"] == 0 or rnd == cfg["rounds"]


class RoundSkipped(RuntimeError):
    """Raised by ``Algorithm.aggregate`` when this round's update cannot be formed (e.g. secure
    aggregation could not unmask); the engine records the reason and the round moves nothing."""


class QuorumError(RuntimeError):
    """Too few valid replies and ``engine.on_quorum_fail = stop``; ``stats`` is the round's record."""

    def __init__(self, message: str, stats: "RoundStats | None" = None):
        super().__init__(message)
        self.stats = stats


@dataclass
class ClientFailure:
    """A client that raised: the exception's type and first line, and its traceback where the
    engine can see it (``errors.log``). Carried as data from the device to the round's stats."""

    type: str
    message: str  # the first line of the exception's text, at most 300 characters
    traceback: str | None = None

    @classmethod
    def of(cls, e: BaseException, traceback: str | None = None) -> "ClientFailure":
        return cls(e.__class__.__name__, first_line(str(e)), traceback)

    @classmethod
    def from_reason(cls, reason: str) -> "ClientFailure":
        """From a ``Type: message`` text written by something else (a Flower node's error reason)."""
        kind, _, message = reason.strip().partition(":")
        return cls(kind.strip() or "Exception", first_line(message))


def first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0][:300] if text else ""


@dataclass
class ClientOutcome:
    """What came back from one client: reply bytes, or why nothing usable came."""

    reply: bytes | None = None
    error: str | None = None  # why no reply: "dropout" | "error" (then ``failure`` says what); None when a reply came
    seconds: float = 0.0
    failure: ClientFailure | None = None
    duplicates: list[bytes] = field(default_factory=list)  # later replies from the same client this round
    #: the reply already decoded by the engine while other clients still trained (``Engine.decode_early``):
    #: (the specs it was decoded against, the payload or PayloadError); used only for those same specs
    early: tuple | None = field(default=None, repr=False, compare=False)

    @classmethod
    def raised(cls, failure: ClientFailure, seconds: float = 0.0) -> "ClientOutcome":
        return cls(error="error", seconds=seconds, failure=failure)


@dataclass
class RoundStats:
    round: int
    clients_sampled: int = 0
    clients_ok: int = 0
    clients_dropped: int = 0
    clients_rejected: int = 0
    dropped_reasons: dict[str, int] = field(default_factory=dict)
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    aggregated: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    #: one entry per client that raised: {"cid", "type", "message" (first line), "traceback"}
    errors: list[dict[str, Any]] = field(default_factory=list)
    #: client updates attempted this round (sampled and not simulated-dropped), for the failure share
    attempted: int = 0


def client_error(out: ClientOutcome, cid: int) -> dict[str, Any] | None:
    """The record of a client's failure for the round's stats, or None if it did not raise."""
    f = out.failure
    if f is None:
        return None
    return {"cid": cid, "type": f.type, "message": f.message, "traceback": f.traceback}


def run_client(client: ClientHalf, rnd: int, down_bytes: bytes, data: ClientData, state: dict, run_id: int) -> bytes:
    """The device side of a round: decode (validating) the downlink, update, encode the reply."""
    down = wire.decode(down_bytes, client.downlink_specs(rnd), round=rnd, run=run_id)
    up = client.update(rnd, down, data, state)
    return wire.encode(up, rnd, run_id)


def sample_clients(seed: int, rnd: int, num_clients: int, fraction: float) -> list[int]:
    """``fraction`` of the clients, uniformly (what ``engine.availability = always`` draws)."""
    k = max(1, int(round(fraction * num_clients)))
    rng = np.random.default_rng(derive_seed(seed, "sample", rnd))
    return sorted(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def dropped_clients(seed: int, rnd: int, sampled: list[int], p: float) -> set[int]:
    if p <= 0:
        return set()
    rng = np.random.default_rng(derive_seed(seed, "dropout", rnd))
    draws = rng.random(len(sampled))
    return {c for c, u in zip(sampled, draws) if u < p}


class Engine(ABC):
    def __init__(self, cfg, algorithm: Algorithm, client_data: list[ClientData], ledger: wire.Ledger, run_id: int):
        self.cfg = cfg
        self.algorithm = algorithm
        self.client_data = client_data
        self.ledger = ledger
        self.run_id = run_id
        self.max_bytes = int(cfg["engine.max_payload_mb"] * 2**20)
        self.training_exchange = False  # True while ``_execute`` runs the method's exchange of a round
        self.on_client = None  # progress: called (round, clients done, clients in the exchange) where an engine can
        self.sampler = CohortSampler(cfg, len(client_data))

    # --- where client code runs -------------------------------------------------
    @abstractmethod
    def _execute(self, rnd: int, jobs: dict[int, bytes]) -> dict[int, ClientOutcome]:
        """Run ``run_client`` for each (cid -> downlink bytes); return each client's outcome."""

    @abstractmethod
    def client_states(self) -> dict[int, dict]: ...

    @abstractmethod
    def load_client_states(self, states: dict[int, dict]) -> None: ...

    @abstractmethod
    def evaluate_clients(self, x, y) -> dict[int, dict]: ...

    def close(self) -> None:
        pass

    # --- the round, identical for every engine ------------------------------------
    def run_round(self, rnd: int) -> RoundStats:
        cfg = self.cfg
        seed = cfg["seed"]
        sampled, online = self.sampler(rnd)
        stats = RoundStats(rnd, clients_sampled=len(sampled))
        if self.sampler.trace != "always":
            stats.metrics["clients_online"] = online
        if not sampled:  # the availability trace left nobody online: nothing to ask, nothing aggregated
            stats.metrics["skipped"] = f"round {rnd}: no client online (engine.availability={self.sampler.trace}, engine.availability_min={cfg['engine.availability_min']})"
            return stats
        stats.metrics.update(self._round_exchanges(rnd, "setup", list(range(len(self.client_data)))))
        stats.metrics.update(self._round_exchanges(rnd, "before", sampled))
        downs = self.algorithm.configure(rnd, sampled)
        jobs: dict[int, bytes] = {}
        encoded: dict[int, bytes] = {}  # a payload object sent to many clients (one global model) is encoded once
        for cid in sampled:
            if cid not in downs:  # left out by an extra exchange (e.g. no keys from it): not contacted
                continue
            data = encoded.get(id(downs[cid]))
            if data is None:
                data = encoded[id(downs[cid])] = wire.encode(downs[cid], rnd, self.run_id)
            self._record_down(rnd, cid, data, downs[cid])
            jobs[cid] = data
        gone = dropped_clients(seed, rnd, list(jobs), cfg["engine.dropout"])
        self.training_exchange = True  # the method's own exchange (engines may fold work into it)
        try:
            outcomes = self._execute(rnd, {c: b for c, b in jobs.items() if c not in gone})
        finally:
            self.training_exchange = False
        dropped: Counter = Counter({"dropout": len(gone)} if gone else {})
        rejected: Counter = Counter()
        replies = self._accept(rnd, outcomes, self.algorithm.uplink_specs, dropped, rejected)
        stats.attempted = len(jobs) - len(gone)
        stats.errors = [e for cid in sorted(outcomes) if (e := client_error(outcomes[cid], cid))]
        for cid in sampled:
            if cid not in jobs:
                dropped["not-configured"] += 1
            elif cid not in outcomes and cid not in gone:
                dropped["no-reply"] += 1
        stats.clients_ok = len(replies)
        stats.clients_dropped = sum(dropped.values())
        stats.clients_rejected = sum(rejected.values())
        stats.dropped_reasons = dict(sorted(dropped.items()))
        stats.rejected_reasons = dict(sorted(rejected.items()))
        if len(replies) < cfg["engine.min_replies"]:
            msg = f"round {rnd}: {len(replies)} valid replies, fewer than engine.min_replies={cfg['engine.min_replies']}"
            if cfg["engine.on_quorum_fail"] == "stop":
                raise QuorumError(msg, stats)
            stats.metrics["skipped"] = msg
            return stats
        stats.metrics.update(self._round_exchanges(rnd, "after", sorted(replies)))
        try:
            stats.metrics.update(self.algorithm.aggregate(rnd, replies))
        except RoundSkipped as e:
            stats.metrics["skipped"] = f"round {rnd}: {e}"
            return stats
        stats.aggregated = True
        return stats

    def _record_down(self, rnd: int, cid: int, data: bytes, payload: wire.Payload) -> None:
        """Ledger lines of one downlink: one per category the payload says it carries."""
        parts = payload.ledger_parts(len(data))
        for category, n in parts:
            self.ledger.record(rnd, "down", cid, n, category)

    def _round_exchanges(self, rnd: int, stage: str, client_ids: list[int]) -> dict:
        """The exchanges of one stage of a round, all through one loop: ``setup`` (the one-time
        exchanges of ``Algorithm.setup_configure``: every client, no simulated dropout) and the
        method's extra exchanges ``before``/``after`` training (``Algorithm.round_configure``).
        Each stage runs until the algorithm has nothing more to send (at most MAX_SETUP_EXCHANGES);
        replies take the one accepting path (``_accept``) and are counted in this round's ledger."""
        a = self.algorithm
        if stage == "setup":
            configure, specs, finish, p, prefix = a.setup_configure, a.setup_uplink_specs, a.setup_aggregate, 0.0, "setup"
        else:
            configure = lambda r, ids: a.round_configure(r, stage, ids)  # noqa: E731
            specs = lambda r, c: a.round_uplink_specs(r, stage, c)  # noqa: E731
            finish = lambda r, replies: a.round_aggregate(r, stage, replies)  # noqa: E731
            p, prefix = a.round_dropout(rnd, stage), f"{stage}_exchange"
        metrics: dict = {}
        for i in range(MAX_SETUP_EXCHANGES):
            downs = configure(rnd, client_ids)
            if not downs:
                break
            jobs: dict[int, bytes] = {}
            for cid, payload in sorted(downs.items()):
                data = wire.encode(payload, rnd, self.run_id)
                self._record_down(rnd, cid, data, payload)
                jobs[cid] = data
            gone = dropped_clients(derive_seed(self.cfg["seed"], "round-exchange", stage, i), rnd, sorted(jobs), p) if p > 0 else set()
            dropped: Counter = Counter()
            rejected: Counter = Counter()
            outcomes = self._execute(rnd, {c: b for c, b in jobs.items() if c not in gone})
            replies = self._accept(rnd, outcomes, specs, dropped, rejected)
            lost = sum(dropped.values()) + len(gone) + sum(1 for c in jobs if c not in outcomes and c not in gone)
            if lost:
                metrics[f"{prefix}_dropped"] = metrics.get(f"{prefix}_dropped", 0) + lost
            if rejected:
                metrics[f"{prefix}_rejected"] = metrics.get(f"{prefix}_rejected", 0) + sum(rejected.values())
            metrics.update(finish(rnd, replies))
        return metrics

    def _accept(self, rnd: int, outcomes: dict[int, ClientOutcome], specs_for, dropped: Counter, rejected: Counter) -> dict[int, wire.Payload]:
        """The one path every client reply takes (training rounds and setup exchanges alike).

        Every byte that arrived is counted in the ledger, whatever happens to it: a valid
        reply under its payload's category, a late one (past ``engine.deadline``) as
        "late", a duplicate, oversized, non-bytes or invalid one as "rejected". Only the
        first reply of a client is decoded; ``specs_for(rnd, cid)`` gives what it may be.
        """
        deadline = self.cfg["engine.deadline"]
        replies: dict[int, wire.Payload] = {}
        todo: list[tuple[int, bytes, int, tuple | None]] = []  # (cid, reply, size, early decode) to decode, all at once (wire.decode_many)
        for cid in sorted(outcomes):
            out = outcomes[cid]
            for extra in out.duplicates:  # only a client's first reply counts; never decoded
                self.ledger.record(rnd, "up", cid, _size(extra), "rejected")
                rejected["duplicate"] += 1
            if out.reply is None:
                dropped[out.error or "no-reply"] += 1
                continue
            size = _size(out.reply)
            if not isinstance(out.reply, (bytes, bytearray)):
                self.ledger.record(rnd, "up", cid, size, "rejected")
                rejected["not-bytes"] += 1
                continue
            if deadline and out.seconds > deadline:
                self.ledger.record(rnd, "up", cid, size, "late")
                dropped["deadline"] += 1
                continue
            if size > self.max_bytes:
                self.ledger.record(rnd, "up", cid, size, "rejected")
                rejected["oversized"] += 1
                continue
            todo.append((cid, bytes(out.reply), size, out.early))
        specs = _shared([specs_for(rnd, cid) for cid, _, _, _ in todo])
        decoded: list = [e[1] if e is not None and e[0] == sp else None for (_, _, _, e), sp in zip(todo, specs)]
        rest = [k for k, d in enumerate(decoded) if d is None]  # decoding is a function of the bytes and the specs: an early result stands
        for k, d in zip(rest, wire.decode_many([todo[k][1] for k in rest], [specs[k] for k in rest], round=rnd, run=self.run_id)):
            decoded[k] = d
        for (cid, _, size, _), payload in zip(todo, decoded):
            if isinstance(payload, wire.PayloadError):
                self.ledger.record(rnd, "up", cid, size, "rejected")
                rejected[payload.reason] += 1
                continue
            self.ledger.record(rnd, "up", cid, size, payload.CATEGORY)
            replies[cid] = payload
        return replies

    def decode_early(self, rnd: int, outcomes: dict[int, ClientOutcome]) -> None:
        """Decode (validating) the replies of some of the training exchange's clients while others
        still train, for ``_accept`` to use: exactly the replies it would decode, against the specs
        it would use (it checks them again), so nothing but the time it is done at changes."""
        if not self.training_exchange:
            return
        deadline = self.cfg["engine.deadline"]
        todo = [(cid, out) for cid, out in sorted(outcomes.items()) if isinstance(out.reply, (bytes, bytearray)) and not (deadline and out.seconds > deadline) and len(out.reply) <= self.max_bytes]
        specs = _shared([self.algorithm.uplink_specs(rnd, cid) for cid, _ in todo])
        for (cid, out), sp, d in zip(todo, specs, wire.decode_many([bytes(out.reply) for _, out in todo], specs, round=rnd, run=self.run_id)):
            out.early = (sp, d)


def _shared(specs: list) -> list:
    """``specs`` with equal neighbours made one object (a method that builds its specs dict per
    call), so that ``wire.decode_many`` sees one spec and reads its replies as one batch."""
    out, last = [], None
    for sp in specs:
        if last is not None and sp is not last and sp == last:
            sp = last
        out.append(sp)
        last = sp
    return out


def _size(data) -> int:
    return len(data) if isinstance(data, (bytes, bytearray)) else 0


class ServerHeldStates:
    """For engines that keep every client's persistent state in the server process
    (local, Ray): the states dict is what checkpoints save and resume restores, or, with
    ``engine.client_state = disk``, a :class:`~featherfl.engines.state_store.DiskStates` in the
    run folder whose index is what checkpoints save."""

    states: dict[int, dict]

    def keep_states_on_disk(self, folder) -> None:
        from featherfl.engines.state_store import DiskStates

        self.states = DiskStates(folder, len(self.client_data))

    def client_states(self) -> dict:
        if hasattr(self.states, "commit"):
            return self.states.commit()
        return self.states

    def load_client_states(self, states: dict) -> None:
        if hasattr(self.states, "restore"):
            self.states.restore(states)
            return
        if isinstance(states, dict) and states.get("store") == "disk":
            raise ValueError("the checkpoint keeps client states on disk; this run holds them in memory (engine.client_state)")
        self.states = {int(k): v for k, v in states.items()}

    def held_ids(self) -> list[int]:
        """The clients that have a state (a disk store knows without reading any)."""
        if hasattr(self.states, "held_ids"):
            return self.states.held_ids()
        return sorted(cid for cid, st in self.states.items() if st)

    def evaluate_held(self, evaluate, x, y) -> dict[int, dict]:
        """``evaluate(state, x, y)`` of every client: each held state on its own, and the clients
        without one (most of a large population) by one evaluation of the empty state, shared,
        since an evaluation is a function of (state, x, y). O(held) evaluations, not O(population)."""
        held = set(self.held_ids())
        out = {cid: evaluate(self.peek_state(cid), x, y) for cid in sorted(held)}
        if len(held) < len(self.client_data):
            empty = evaluate({}, x, y)
            for cid in range(len(self.client_data)):
                if cid not in held:
                    out[cid] = dict(empty)
        return dict(sorted(out.items()))

    def peek_state(self, cid: int) -> dict:
        """A client's state to read (evaluation): a disk store does not keep it in memory."""
        if hasattr(self.states, "peek"):
            return self.states.peek(cid)
        return self.states.setdefault(cid, {})

