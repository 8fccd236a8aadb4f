"""Byzantine clients for robustness experiments (config section ``[attack]``).

A fixed share ``attack.fraction`` of the clients, chosen once from the run
seed, is malicious. Every time such a client is sampled it computes its honest
reply and then alters every float tensor of it before encoding, so the attack
goes through the same codec, validation and ledger as an honest reply and
works the same for every algorithm and every engine.

Each float tensor ``u`` of the reply is read as ``reference + delta``, where
``reference`` is the downlink tensor of the same name and shape (e.g. the
global weights FedAvg sends and gets back) and zero otherwise (a gradient,
BAFFLE's K loss differences, FD's logits). The kinds follow the attacks used
to evaluate Byzantine-robust aggregation (Blanchard et al. 2017; Yin et al.
2018; Fang et al. 2020):

- ``scale``:     reference + s * delta      (a boosted update, model replacement)
- ``sign-flip``: reference - s * delta      (the update reversed and boosted)
- ``noise``:     reference + N(0, std^2)    (the update replaced by Gaussian noise)
- ``constant``:  reference + value          (every entry of the update set to one value)
- ``inflate-count``: the update is honest but the reply claims ``claimed_samples``
  samples, to buy weight in a sample-weighted mean (``num_samples`` fields only)

Attacked tensors keep their shape and dtype; the receiver's range checks
(e.g. ``max_abs``) still apply and may reject an over-boosted reply, which is
the server doing its job, and is counted as such.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from featherfl.algorithms.base import ClientWrapper, Wrapper
from featherfl.seeding import derive_seed, generator
from featherfl.wire import Payload

KINDS = ("scale", "sign-flip", "noise", "constant", "inflate-count")


@lru_cache(maxsize=64)
def attackers(seed: int, num_clients: int, fraction: float) -> frozenset[int]:
    """The malicious client ids: the first round(fraction * n) of a seeded permutation."""
    k = min(num_clients, int(math.floor(fraction * num_clients + 0.5)))
    if k <= 0:
        return frozenset()
    perm = np.random.default_rng(derive_seed(seed, "attackers")).permutation(num_clients)
    return frozenset(int(c) for c in perm[:k])


@dataclass(frozen=True)
class Attack:
    kind: str
    scale: float = 10.0
    noise_std: float = 1.0
    value: float = 1.0
    seed: int = 0
    claimed_samples: int = 1_000_000_000

    def delta(self, rnd: int, cid: int, name: str, d: torch.Tensor) -> torch.Tensor:
        if self.kind == "scale":
            return self.scale * d
        if self.kind == "sign-flip":
            return -self.scale * d
        if self.kind == "noise":
            g = generator(self.seed, "attack-noise", rnd, cid, name)
            return self.noise_std * torch.randn(d.shape, generator=g, dtype=torch.float32).to(d.dtype)
        if self.kind == "constant":
            return torch.full_like(d, self.value)
        raise ValueError(f"unknown attack kind {self.kind!r}; expected one of {', '.join(KINDS)}")

    def apply(self, rnd: int, cid: int, down: Payload | None, up: Payload) -> Payload:
        """The reply ``up`` as this attacker sends it (see the module docstring)."""
        if self.kind == "inflate-count":
            names = {f.name for f in dataclasses.fields(up)}
            return dataclasses.replace(up, num_samples=int(self.claimed_samples)) if "num_samples" in names else up
        changed = {}
        for f in dataclasses.fields(up):
            u = getattr(up, f.name)
            if not isinstance(u, torch.Tensor) or not u.is_floating_point():
                continue
            ref = getattr(down, f.name, None) if down is not None else None
            if not (isinstance(ref, torch.Tensor) and ref.shape == u.shape and ref.is_floating_point()):
                ref = torch.zeros_like(u)
            ref = ref.to(u.dtype)
            changed[f.name] = (ref + self.delta(rnd, cid, f.name, u - ref)).to(u.dtype)
        return dataclasses.replace(up, **changed) if changed else up


class AttackingClient(ClientWrapper):
    """A client half whose replies the ``[attack]`` config alters for the Byzantine clients.

    It wraps any method's client half: the honest update runs unchanged, then an attacker's
    reply is altered before it is encoded, so the attack goes through the same codec,
    validation and ledger on every engine, and no engine or method carries attack code.
    """

    def update(self, rnd: int, down: Payload, data, state: dict) -> Payload:
        up = self.inner.update(rnd, down, data, state)
        attack = attack_for(self.ctx.cfg, data.cid, self.ctx.num_clients)
        return attack.apply(rnd, data.cid, down, up) if attack is not None else up

    def can_update_many(self) -> bool:  # attackers alter replies one by one
        return False


class Attacks(Wrapper):
    """The server side of simulated attackers: nothing of its own (the server does not know who
    attacks); its clients are ``AttackingClient``s. ``featherfl.assembly`` puts it inside secure
    aggregation, so attackers alter their update before it is masked."""

    @classmethod
    def wrap_client(cls, client, method):
        return AttackingClient(client)


def enabled(cfg) -> bool:
    return attack_from_config(cfg) is not None


def attack_from_config(cfg) -> Attack | None:
    if cfg is None or not cfg.get("attack.fraction", 0.0):
        return None
    return Attack(cfg["attack.kind"], cfg["attack.scale"], cfg["attack.noise_std"], cfg["attack.value"], cfg["seed"], cfg["attack.claimed_samples"])


def attack_for(cfg, cid: int, num_clients: int) -> Attack | None:
    """The attack client ``cid`` performs, or None for an honest client."""
    attack = attack_from_config(cfg)
    if attack is None or cid not in attackers(cfg["seed"], num_clients, cfg["attack.fraction"]):
        return None
    return attack
