"""BAFFLE's finite seed pool (``baffle.seed_pool = N``) and its downlink (``baffle.downlink = pool``).

FedKSeed (Qin et al. 2024, "Federated Full-Parameter Tuning of Billion-Sized Language
Models with Communication Cost under 18 Kilobytes", arXiv 2312.06353, Sec. 3) draws
every perturbation direction from a pool of N seeds known to all parties. With a
linear server step (plain SGD, no momentum, no weight decay) the model after any
number of rounds is then

    W = W_0 + sum_j c_j z_j,        j = 0 .. N-1,

where z_j is the direction of pool seed j and c_j the running sum of every scalar
ever applied along it (the scalars are -lr x weight x d_k / (K sigma), times the
estimate's clip factor). The state a client must know is the N coefficients, not the
weights, and it never grows: a client that missed any number of rounds catches up by
downloading the coefficients that changed since it last took part, as (index, value)
pairs, or all N values where that is smaller.

Bit-exactness: server and clients compute W with :func:`materialize`, the same
sequence of float32 operations from W_0 (which both build from the seeded initial
trainable tensors and the pretrained files) and the same float32 coefficients, so
they agree bit for bit; a fingerprint of the weights travels with each downlink and
a client whose rebuild disagrees fails loudly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from featherfl.algorithms import zo
from featherfl.algorithms.baffle_replay import SEED_MAX, fingerprint
from featherfl.seeding import derive_seed
from featherfl.wire import Payload, ScalarSpec, Spec, TensorSpec


def pool_base(run_seed: int) -> int:
    """The pool's root seed: pool seed j is ``derive_seed(pool_base, j)``, the same for every party of a run."""
    return derive_seed(run_seed, "baffle-seed-pool") % SEED_MAX


def pool_index(base_seed: int, step: int, k: int, n: int) -> int:
    """Which pool seed is direction k of local step ``step`` under a round's base seed."""
    return zo.direction_seed(base_seed, step, k) % n


def pool_seed(root: int, index: int) -> int:
    return derive_seed(root, index) % SEED_MAX


@dataclass(frozen=True)
class PoolDown(Payload):
    """The coefficients that changed since the client's last contact: ``coef[i]`` is the new
    value of pool entry ``idx[i]``; with ``idx`` empty, ``coef`` holds all N values (or none: nothing changed)."""

    KIND = "baffle.pool"
    CATEGORY = "seeds"
    idx: torch.Tensor
    coef: torch.Tensor
    through: int
    fingerprint: int
    seed: int


def downlink_specs(n: int) -> dict:
    return {
        PoolDown.KIND: Spec(
            PoolDown,
            {"idx": TensorSpec("int32", (None,), max_elems=n, min_value=0, max_value=n - 1), "coef": TensorSpec("float32", (None,), max_abs=1e9, max_elems=n)},
            {"through": ScalarSpec("int", 0, 2**31), "fingerprint": ScalarSpec("int", 0, SEED_MAX), "seed": ScalarSpec("int", 0, SEED_MAX)},
        )
    }


def materialize(theta0: torch.Tensor, coef: torch.Tensor, root: int) -> torch.Tensor:
    """W_0 + sum_j c_j z_j, pool entries in ascending order, each direction regenerated a chunk at a time."""
    theta = theta0.clone()
    numel = theta.numel()
    buf = torch.empty(min(zo.CHUNK, max(numel, 1)))
    for j in torch.nonzero(coef).flatten().tolist():
        c = float(coef[j])
        for a, b, z in zo.direction_chunks(pool_seed(root, j), numel, buf):
            theta[a:b].add_(z, alpha=c)
    return theta


class SeedPoolServer:
    """Server side: the N coefficients, and the coefficients each client is known to hold."""

    def __init__(self, theta0: torch.Tensor, n: int, root: int):
        self.theta0 = theta0.clone()
        self.n = n
        self.root = root
        self.coef = torch.zeros(n)
        self.held: dict[int, torch.Tensor] = {}
        self.sent: dict[int, torch.Tensor] = {}

    def add(self, indices: list[int], values: list[float]) -> None:
        """Add a round's scalars along their pool entries (summed in float64, stored as float32)."""
        delta = torch.zeros(self.n, dtype=torch.float64)
        delta.index_add_(0, torch.tensor(indices, dtype=torch.long), torch.tensor(values, dtype=torch.float64))
        self.coef.add_(delta.to(torch.float32))

    def weights(self) -> torch.Tensor:
        return materialize(self.theta0, self.coef, self.root)

    def downlink(self, cid: int, through: int, fp: int, seed: int) -> PoolDown:
        """The changed entries as (index, value) pairs, or all N values when those are fewer bytes."""
        base = self.held.get(cid)
        base = torch.zeros(self.n) if base is None else base
        changed = torch.nonzero(self.coef != base).flatten()
        self.sent[cid] = self.coef.clone()
        if changed.numel() and 2 * changed.numel() >= self.n:
            return PoolDown(torch.zeros(0, dtype=torch.int32), self.coef.clone(), through, fp, seed)
        return PoolDown(changed.to(torch.int32), self.coef[changed].clone(), through, fp, seed)

    def record(self, replied: list[int]) -> None:
        """A client that replied holds what it was sent."""
        for c in replied:
            if c in self.sent:
                self.held[c] = self.sent[c]

    def state_dict(self) -> dict:
        return {"coef": self.coef.clone(), "held": {str(c): t.clone() for c, t in self.held.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.coef.copy_(state["coef"])
        self.held = {int(c): t.clone() for c, t in state["held"].items()}


def pool_catch_up(down: PoolDown, state: dict, theta0: torch.Tensor, n: int, root: int) -> torch.Tensor:
    """Client side: apply the received coefficients to the ones this client holds, rebuild the weights
    from W_0 and check the fingerprint."""
    coef = state.get("pool_coef")
    coef = torch.zeros(n) if coef is None else coef.clone()
    if down.idx.numel() == 0:
        if down.coef.numel() not in (0, n):
            raise RuntimeError("baffle pool downlink is inconsistent")
        if down.coef.numel():
            coef.copy_(down.coef)
    else:
        if down.coef.numel() != down.idx.numel():
            raise RuntimeError("baffle pool downlink is inconsistent")
        coef[down.idx.long()] = down.coef
    theta = materialize(theta0, coef, root)
    if fingerprint(theta) != down.fingerprint:
        raise RuntimeError("baffle client's pool weights diverged from the global model (fingerprint mismatch)")
    state.clear()
    state.update(pool_coef=coef, through=down.through)
    return theta
