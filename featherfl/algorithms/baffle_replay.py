"""BAFFLE's replay downlink (``baffle.downlink = replay``): seeds + scalars instead of weights.

BAFFLE's server update is a pure function of the round's seeds and the clients' loss
differences (Feng et al. 2023, Sec. 3.2), so a client that still holds the previous
global model (its *replica*, kept in its client state together with the server
optimizer's state) can apply the update itself from those few numbers. This module is
that downlink and nothing else:

- :class:`RoundEntry` is one aggregated round as seeds + scalars; the server applies it
  to its own model and keeps it in a log, and a replica applies the same entries.
- :class:`ReplayLog` (server side) remembers the entries and the round each client's
  replica reached, and picks per client the smaller of a replay (the missed entries)
  and a sync (the full state), dropping history older than one model's worth of scalars.
- :func:`catch_up` (client side) brings a replica up to date and checks a fingerprint
  of the result, so a replica that drifted fails loudly instead of training on the
  wrong model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

from featherfl.wire import Payload, ScalarSpec, Spec, TensorSpec, encode

SEED_MAX = 2**62
MAX_SAMPLES = 10**9
MAX_DIFF = 1e6


@dataclass(frozen=True)
class RoundEntry:
    """One aggregated round: ``diffs`` holds one S x K block of loss differences per
    contributor, block j with base seed ``seeds[j]`` and weight ``counts[j]``.
    ``precombined`` marks the single block of already-aggregated scalars that shared
    directions allow (the estimate of the averaged scalars is the averaged estimate)."""

    seeds: tuple[int, ...]
    counts: tuple[int, ...]
    diffs: torch.Tensor
    precombined: bool

    def to_state(self) -> dict:
        """Plain tensors and lists, so a checkpoint loads with ``weights_only=True``."""
        return {"seeds": list(self.seeds), "counts": list(self.counts), "diffs": self.diffs, "precombined": self.precombined}

    @classmethod
    def from_state(cls, d: dict) -> "RoundEntry":
        return cls(tuple(int(s) for s in d["seeds"]), tuple(int(c) for c in d["counts"]), d["diffs"], bool(d["precombined"]))


class Replica(Protocol):
    """What a replica needs from BAFFLE's server model (``baffle.ServerModel``)."""

    theta: torch.nn.Parameter

    def apply(self, entry: RoundEntry) -> dict: ...

    def opt_tensors(self) -> tuple[torch.Tensor, int]: ...


@dataclass(frozen=True)
class SyncDown(Payload):
    """First contact, or history too long: the full replica state."""

    KIND = "baffle.sync"
    CATEGORY = "weights"
    weights: torch.Tensor
    opt_state: torch.Tensor
    opt_step: int
    through: int
    seed: int


@dataclass(frozen=True)
class ReplayDown(Payload):
    """What the replica missed, one entry per aggregated round.

    ``rounds[i]`` had ``contributors[i]`` blocks (``precombined[i]`` as in
    :class:`RoundEntry`); the blocks' S x K values lie one after another in the flat
    ``diffs``, block j with base seed ``seeds[j]`` and weight ``counts[j]``.
    ``fingerprint`` hashes the resulting weights.
    """

    KIND = "baffle.replay"
    CATEGORY = "seeds"
    diffs: torch.Tensor
    rounds: list
    contributors: list
    precombined: list
    seeds: list
    counts: list
    through: int
    fingerprint: int
    seed: int


def fingerprint(theta: torch.Tensor) -> int:
    return int.from_bytes(hashlib.blake2b(theta.numpy().tobytes(), digest_size=8).digest(), "little") & (SEED_MAX - 1)


def downlink_specs(n_state: int, n_params: int, max_history: int = 2**26) -> dict:
    """The client's accepted shapes and ranges for the two replay payloads."""
    seed = ScalarSpec("int", 0, SEED_MAX)
    return {
        SyncDown.KIND: Spec(
            SyncDown,
            {"weights": TensorSpec("float32", (n_state,), max_abs=1e6), "opt_state": TensorSpec("float32", (None,), max_elems=2 * n_params)},
            {"opt_step": ScalarSpec("int", 0, 2**40), "through": ScalarSpec("int", 0, 2**31), "seed": seed},
        ),
        ReplayDown.KIND: Spec(
            ReplayDown,
            {"diffs": TensorSpec("float32", (None,), max_abs=MAX_DIFF, max_elems=max_history)},
            {
                "rounds": ScalarSpec("list[int]", 1, 2**31, max_len=100_000),
                "contributors": ScalarSpec("list[int]", 1, 100_000, max_len=100_000),
                "precombined": ScalarSpec("list[int]", 0, 1, max_len=100_000),
                "seeds": ScalarSpec("list[int]", 0, SEED_MAX, max_len=1_000_000),
                "counts": ScalarSpec("list[int]", 1, MAX_SAMPLES, max_len=1_000_000),
                "through": ScalarSpec("int", 0, 2**31),
                "fingerprint": ScalarSpec("int", 0, SEED_MAX),
                "seed": seed,
            },
        ),
    }


class ReplayLog:
    """Server side: the entries clients may still need and the round each replica holds.

    A client's replica is known to hold round ``r`` once it replied to a downlink that
    brought it to ``r``. The log keeps only the newest entries whose scalars fit in the
    model's size (``budget`` values): a client that missed more gets the weights again.
    """

    def __init__(self, budget: int):
        self.budget = budget
        self.history: dict[int, RoundEntry] = {}
        self.floor = 0
        self.synced: dict[int, int] = {}
        self.sent: dict[int, int] = {}

    def downlink(self, cid: int, sync: SyncDown, fp: int) -> Payload:
        """The smaller (encoded) of a replay of what ``cid`` missed and the full ``sync``."""
        self.sent[cid] = sync.through
        last = self.synced.get(cid)
        if last is None or last < self.floor:
            return sync
        replay = self._replay(last, sync.through, fp, sync.seed)
        return replay if len(encode(replay)) < len(encode(sync)) else sync

    def _replay(self, since: int, through: int, fp: int, seed: int) -> ReplayDown:
        rounds = [r for r in sorted(self.history) if r > since]
        es = [self.history[r] for r in rounds]
        flat = torch.cat([e.diffs.reshape(-1) for e in es]) if es else torch.zeros(0)
        return ReplayDown(
            flat,
            rounds,
            [len(e.seeds) for e in es],
            [int(e.precombined) for e in es],
            [s for e in es for s in e.seeds],
            [c for e in es for c in e.counts],
            through,
            fp,
            seed,
        )

    def record(self, rnd: int, entry: RoundEntry, replied: list[int]) -> None:
        """Log round ``rnd``'s entry; every client that replied holds what it was sent."""
        for c in replied:
            if c in self.sent:
                self.synced[c] = self.sent[c]
        self.history[rnd] = entry
        total = 0
        for r in sorted(self.history, reverse=True):
            total += self.history[r].diffs.numel() + 2 * len(self.history[r].seeds)
            if total > self.budget:
                for old in [q for q in self.history if q <= r]:
                    del self.history[old]
                self.floor = max(self.floor, r)
                break

    def state_dict(self) -> dict:
        return {
            "history": {str(r): e.to_state() for r, e in self.history.items()},
            "floor": self.floor,
            "synced": {str(c): r for c, r in self.synced.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.history = {int(r): RoundEntry.from_state(e) for r, e in state["history"].items()}
        self.floor = int(state["floor"])
        self.synced = {int(c): int(r) for c, r in state["synced"].items()}


def catch_up(down: Payload, state: dict, new_replica: Callable[[torch.Tensor, torch.Tensor, int], Replica], steps: int, k: int) -> torch.Tensor:
    """Apply a :class:`ReplayDown`'s missed entries to the client's replica (kept in
    ``state``) and return the resulting weights. ``new_replica(theta, opt_state, opt_step)``
    rebuilds the server model from the replica state; one block is ``steps`` x ``k`` scalars."""
    if "theta" not in state:
        raise RuntimeError("baffle replay downlink but this client holds no replica")
    server = new_replica(state["theta"], state["opt_state"], state["opt_step"])
    block = steps * k
    flat = down.diffs
    off = blk = 0
    for rnd, c, pre in zip(down.rounds, down.contributors, down.precombined):
        n = c * block
        if flat.numel() < off + n or blk + c > len(down.seeds):
            raise RuntimeError("baffle replay downlink is inconsistent")
        if rnd > state["through"]:
            entry = RoundEntry(tuple(down.seeds[blk : blk + c]), tuple(down.counts[blk : blk + c]), flat[off : off + n].view(c, steps, k), bool(pre))
            server.apply(entry)
        off += n
        blk += c
    if fingerprint(server.theta.data) != down.fingerprint:
        raise RuntimeError("baffle replica diverged from the global model (fingerprint mismatch)")
    opt_state, opt_step = server.opt_tensors()
    state.update(theta=server.theta.data.clone(), opt_state=opt_state, opt_step=opt_step, through=down.through)
    return state["theta"]


def sync_state(down: SyncDown, theta: torch.Tensor, state: dict) -> torch.Tensor:
    """Replace the replica with a :class:`SyncDown`'s state; ``theta`` is its weights as the client's flat parameters."""
    state.clear()
    state.update(theta=theta, opt_state=down.opt_state.clone(), opt_step=down.opt_step, through=down.through)
    return theta
