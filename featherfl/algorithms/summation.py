"""What of a method's upload is a sum, and how its server finishes a round from the sum alone.

A feature that shows the server only the sum of a round's uploads (secure aggregation,
``featherfl.secagg``) asks the method, through ``Algorithm.summation``, for one of these; it
never names a method. Each method declares its own in its own file: FedAvg and FedSGD the plain
``WeightedMean`` below, BAFFLE, FedPEFT and FD a subclass saying what differs for them.

One object per side: a client builds it from its context alone (``server`` is None) and uses
the client half; the server builds it around the (possibly wrapped) method and uses the server
half.

- client: ``client_down_specs`` / ``client_down`` (what the method's client receives instead,
  if anything), ``summand`` (the vector to add up, and cleartext values whose maximum the server
  may see);
- both: ``value_range`` (the declared range and precision of what is summed, from which secure
  aggregation picks its word size: 8, 16, 32 or 64 bits) and ``count_entries`` (how many trailing
  entries of the summand are whole counts, which travel as integers, one step each);
- server: ``configure`` (the downlink), ``dim`` and ``clear_len`` (the masked upload's shape),
  ``finish`` (the round, from the summed vector), ``state_dict`` / ``load_state_dict``.

``WeightedMean``: a client sends ``[w * v, w]`` with ``v`` its update (a tensor the downlink also
carried, with the same shape, as the difference from it; gradients and other values as they are)
and ``w`` its weight (its sample count, cut at ``max_samples``, or 1 under ``weighting =
uniform``). The server divides and hands the mean to the method's own ``aggregate`` as a single
reply of weight 1, so the method's update rule (server learning rate, optimizer) is the one it
always uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from featherfl.config import Config, ConfigError
from featherfl.wire import Payload, Spec

#: the largest |update| per coordinate a WeightedMean declares (weights moved, or a gradient, in
#: one round): beyond it a value is clipped and counted (``secagg_clipped_values``)
UPDATE_BOUND = 16.0
#: the precision it declares: the mean's rounding error is at most half of it, 2^-17 ~ 7.6e-6 per
#: coordinate, below the spread of the clients' own updates at any learning rate used here
UPDATE_STEP = 2.0**-16


@dataclass(frozen=True)
class Range:
    """What a method declares about each value of its summand: at most ``max_abs`` in magnitude,
    needed to a step of ``resolution``; the trailing ``count_entries`` are whole numbers of at
    most ``max_count`` (a weight, a count of clients)."""

    max_abs: float
    resolution: float
    max_count: int = 0


class SumStateError(RuntimeError):
    """A client cannot take its own contribution out of a sum (its record of it is gone)."""


class Summation:
    """The interface (see the module docstring); subclasses fill in both halves."""

    def __init__(self, ctx, name: str, server=None):
        self.ctx = ctx
        self.name = name
        self.opts = ctx.cfg.section(name)
        self.server = server
        #: client side, set by secure aggregation before ``summand``: the client's id and the
        #: round's public parameters (``round_params``)
        self.cid = -1
        self.params: list[float] = []

    @classmethod
    def compatible_defaults(cls, cfg: Config, name: str) -> dict:
        """Keys whose default a sum cannot serve, with the value to use instead where the user
        left them at the default (secure aggregation chooses these, and says so)."""
        return {}

    @classmethod
    def check(cls, cfg: Config, name: str) -> None:
        """One-line ConfigErrors for the settings a sum cannot serve."""
        rule = cfg.section(name).get("aggregation", "mean")
        if rule != "mean":
            raise ConfigError(
                f"config key '{name}.aggregation': {rule} needs every client's own values, which secure aggregation hides from the server; use mean with secagg.protocol={cfg['secagg.protocol']}"
            )

    @classmethod
    def value_range(cls, cfg: Config, name: str) -> Range | None:
        """The declared range and precision of the summand (None: none declared, 64-bit words)."""
        return None

    @classmethod
    def undeclared_reason(cls, cfg: Config, name: str) -> str:
        """Why ``value_range`` is None for this config (one clause)."""
        return "no range declared"

    def count_entries(self) -> int:
        """How many trailing entries of ``summand`` are whole counts (weights, flags)."""
        return 0

    # client side ---------------------------------------------------------------------------
    def client_down_specs(self, specs: dict[str, Spec]) -> dict[str, Spec]:
        return specs

    def client_down(self, down: Payload, state: dict) -> Payload:
        return down

    def summand(self, rnd: int, reply: Payload, down: Payload, state: dict) -> tuple[np.ndarray, list[float]]:
        raise NotImplementedError

    # server side ---------------------------------------------------------------------------
    def configure(self, rnd: int, client_ids: list[int]) -> dict[int, Payload]:
        return self.server.configure(rnd, client_ids)

    def dim(self, rnd: int, cid: int) -> int:
        raise NotImplementedError

    def round_params(self, rnd: int) -> list[float]:
        """Public numbers every client of the round needs to form its summand (e.g. a shared
        quantisation scale); they travel with the masking set."""
        return []

    def clear_len(self) -> int:
        return 0

    def finish(self, rnd: int, total: np.ndarray, clear: dict[int, list[float]], participants: list[int]) -> dict:
        raise NotImplementedError

    def state_dict(self) -> dict | None:
        """What the server keeps between rounds beyond the method's own state (None: nothing)."""
        return None

    def load_state_dict(self, state: dict) -> None:
        pass


def max_weight(opts: dict) -> int | None:
    """The largest weight ``client_weight`` can give (None: as large as a client's claim)."""
    if opts.get("weighting", "uniform") == "uniform":
        return 1
    return int(opts["max_samples"]) if opts.get("max_samples") else None


def client_weight(opts: dict, num_samples: int) -> float:
    if opts.get("weighting", "uniform") == "uniform":
        return 1.0
    n = float(num_samples)
    return min(n, float(opts["max_samples"])) if opts.get("max_samples") else n


def tensor_fields(p: Payload) -> list[str]:
    return sorted(n for n, v in vars(p).items() if isinstance(v, torch.Tensor))


def split(vector: np.ndarray, spec: Spec) -> dict[str, torch.Tensor]:
    """A summed vector back into the reply's tensors (the order ``summand`` wrote them in)."""
    out, i = {}, 0
    flat = torch.from_numpy(np.ascontiguousarray(vector))
    for name in sorted(spec.tensors):
        shape = spec.tensors[name].shape
        n = int(np.prod(shape))
        out[name] = flat[i : i + n].view(shape)
        i += n
    return out


class WeightedMean(Summation):
    """The weighted mean of the clients' updates (see the module docstring)."""

    def __init__(self, ctx, name: str, server=None):
        super().__init__(ctx, name, server)
        self.sent: dict[int, Payload] = {}

    @classmethod
    def compatible_defaults(cls, cfg: Config, name: str) -> dict:
        """``capped`` needs each claim's median, hidden by the sum; ``uniform`` keeps every
        client's weight bounded as capped does."""
        return {f"{name}.weighting": "uniform"} if cfg.section(name).get("weighting") == "capped" else {}

    @classmethod
    def check(cls, cfg: Config, name: str) -> None:
        super().check(cfg, name)
        if cfg.section(name).get("weighting") == "capped":
            raise ConfigError(
                f"config key '{name}.weighting': capped needs every client's claimed count (the round's median), which secure aggregation hides; "
                f"use --set {name}.weighting=samples (optionally with {name}.max_samples) or {name}.weighting=uniform"
            )

    @classmethod
    def value_range(cls, cfg: Config, name: str) -> Range | None:
        """``w v`` with |v| <= ``UPDATE_BOUND`` at a step of ``UPDATE_STEP``, and the weight ``w``."""
        w = max_weight(cfg.section(name))
        return None if w is None else Range(w * UPDATE_BOUND, UPDATE_STEP, w)

    @classmethod
    def undeclared_reason(cls, cfg: Config, name: str) -> str:
        return f"{name}.weighting = {cfg.section(name).get('weighting')} with no {name}.max_samples: a weight as large as a client claims"

    def count_entries(self) -> int:
        return 1

    # client side ---------------------------------------------------------------------------
    def update_vector(self, reply: Payload, down: Payload) -> torch.Tensor:
        """The reply's tensors as one float64 vector, each a difference from the downlink's tensor of its name and shape."""
        parts = []
        for name in tensor_fields(reply):
            v = getattr(reply, name).detach().to(torch.float64).reshape(-1)
            ref = getattr(down, name, None)
            if isinstance(ref, torch.Tensor) and ref.shape == getattr(reply, name).shape:
                v = v - ref.detach().to(torch.float64).reshape(-1)
            parts.append(v)
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)

    def summand(self, rnd: int, reply: Payload, down: Payload, state: dict) -> tuple[np.ndarray, list[float]]:
        v = self.update_vector(reply, down)
        clear = [float(reply.epsilon)] if hasattr(reply, "epsilon") else []
        w = client_weight(self.opts, reply.num_samples)
        return np.concatenate([(w * v).numpy(), [w]]), clear

    # server side ---------------------------------------------------------------------------
    def configure(self, rnd: int, client_ids: list[int]) -> dict[int, Payload]:
        self.sent = self.server.configure(rnd, client_ids)
        return self.sent

    def update_dim(self, rnd: int, cid: int) -> int:
        spec = next(iter(self.server.uplink_specs(rnd, cid).values()))
        return sum(int(np.prod(ts.shape)) for ts in spec.tensors.values())

    def dim(self, rnd: int, cid: int) -> int:
        return self.update_dim(rnd, cid) + 1

    def replies_for(self, mean: Payload, participants: list[int]) -> dict[int, Payload]:
        """The replies the method's ``aggregate`` receives: the mean as one reply."""
        return {participants[0]: mean}

    def finish(self, rnd: int, total: np.ndarray, clear: dict[int, list[float]], participants: list[int]) -> dict:
        weight = float(total[-1])
        if weight <= 0:
            return {"secagg_weight": weight}
        first = participants[0]
        spec = next(iter(self.server.uplink_specs(rnd, first).values()))
        down = self.sent.get(first)
        values = {}
        for name, v in split(total[:-1] / weight, spec).items():
            ref = getattr(down, name, None)
            if isinstance(ref, torch.Tensor) and tuple(ref.shape) == tuple(v.shape):
                v = ref.to(torch.float64) + v
            values[name] = v.to(getattr(torch, spec.tensors[name].dtype))
        for name in spec.scalars:
            if name == "num_samples":
                values[name] = 1
            elif name == "epsilon":
                values[name] = max((c[0] for c in clear.values() if c), default=0.0)
        return self.server.aggregate(rnd, self.replies_for(spec.cls(**values), participants))
