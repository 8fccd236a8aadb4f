"""What each method sums under secure aggregation, and how its server moves from the sum alone.

Every method here needs only a (weighted) sum of what clients send:

- FedAvg, FedSGD, FedPEFT, BAFFLE (weighted mean): a client sends ``[w * v, w]`` with ``v`` its
  update (weights and FedPEFT tensors as the difference from what it was sent, gradients and
  BAFFLE's loss differences as they are) and ``w`` its weight (its sample count, cut at
  ``max_samples``, or 1 under ``weighting = uniform``). The server divides and hands the mean to
  the method's own ``aggregate`` as a single reply of weight 1, so the method's update rule
  (server learning rate, optimizer, BAFFLE's replay log) is the one it always uses.
- FedPEFT with client-level DP: clients clip their own update to ``dp_clip`` and send
  ``[clipped update, 1, clipped?]``; the server divides the sum by the expected number of
  participants and adds the Gaussian noise, as DP-FedAvg does without secure aggregation.
- FD: a device sends ``[F * present, present]`` (its per-label mean outputs where it has the
  label, and which labels it has). The server keeps the round's totals and sends them back; each
  device builds its own leave-one-out teacher ``(T - F_own) / (H - present_own)``, which is the
  plain FD teacher (the mean over the other devices holding the label).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from featherfl.config import Config, ConfigError
from featherfl.wire import Payload, ScalarSpec, Spec, TensorSpec

WEIGHTED = ("fedavg", "fedsgd", "fedpeft", "baffle")
SUPPORTED = (*WEIGHTED, "fd")


def check(cfg: Config, expected: int) -> None:
    """One-line errors for the combinations secure aggregation cannot serve."""
    method = cfg["algorithm"]
    if method not in SUPPORTED:
        raise ConfigError(f"config key 'secagg.protocol': {method} is not supported with secure aggregation; expected one of {', '.join(SUPPORTED)}")
    rule = cfg[f"{method}.aggregation"]
    if rule != "mean":
        raise ConfigError(
            f"config key '{method}.aggregation': {rule} needs every client's own values, which secure aggregation hides from the server; use mean with secagg.protocol={cfg['secagg.protocol']}"
        )
    if method in WEIGHTED and cfg[f"{method}.weighting"] == "capped":
        raise ConfigError(
            f"config key '{method}.weighting': capped needs every client's claimed count (the round's median), which secure aggregation hides; "
            f"use --set {method}.weighting=samples (optionally with {method}.max_samples) or {method}.weighting=uniform"
        )
    if method == "baffle":
        if cfg["baffle.mode"] == "fedsgd" and cfg["baffle.directions"] == "per-client":
            raise ConfigError("config key 'baffle.directions': per-client directions need each client's own scalars; use shared with secure aggregation")
        if cfg["baffle.mode"] == "fedavg":
            if cfg["baffle.directions"] != "shared-all":
                raise ConfigError("config key 'baffle.directions': fedavg mode with secure aggregation needs shared-all (every client the same directions, so the sum of the scalars replays to the sum of the trajectories)")
            if cfg["baffle.local_optimizer"] != "sgd" or cfg["baffle.clip"] > 0:
                raise ConfigError("config key 'baffle.local_optimizer': fedavg mode with secure aggregation needs a linear client step (local_optimizer = sgd, clip = 0), so the averaged scalars replay to the averaged weights")
    if expected < 3:
        raise ConfigError(f"config key 'secagg.protocol': {expected} clients per round; secure aggregation needs at least 3 (with 2, each learns the other's upload from the sum)")


def client_weight(opts: dict, num_samples: int) -> float:
    if opts.get("weighting", "uniform") == "uniform":
        return 1.0
    n = float(num_samples)
    return min(n, float(opts["max_samples"])) if opts.get("max_samples") else n


def _tensor_fields(p: Payload) -> list[str]:
    return sorted(n for n, v in vars(p).items() if isinstance(v, torch.Tensor))


class WeightedMean:
    """FedAvg, FedSGD, FedPEFT, BAFFLE: the weighted mean of the clients' updates."""

    def __init__(self, inner, cfg: Config):
        self.inner = inner
        self.method = cfg["algorithm"]
        self.opts = cfg.section(self.method)
        self.dp_client = self.method == "fedpeft" and self.opts["dp"] == "client"
        self.sent: dict[int, Payload] = {}

    # client side ---------------------------------------------------------------------------
    def client_down_specs(self, specs: dict[str, Spec]) -> dict[str, Spec]:
        return specs

    def client_down(self, down: Payload, state: dict) -> Payload:
        return down

    def summand(self, rnd: int, reply: Payload, down: Payload, state: dict) -> tuple[np.ndarray, list[float]]:
        parts = []
        for name in _tensor_fields(reply):
            v = getattr(reply, name).detach().to(torch.float64).reshape(-1)
            ref = getattr(down, name, None)
            if isinstance(ref, torch.Tensor) and ref.shape == getattr(reply, name).shape:
                v = v - ref.detach().to(torch.float64).reshape(-1)
            parts.append(v)
        v = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
        clear = [float(reply.epsilon)] if hasattr(reply, "epsilon") else []
        if self.dp_client:
            norm = float(v.norm())
            clip = self.opts["dp_clip"]
            if norm > clip:
                v = v * (clip / norm)
            return np.concatenate([v.numpy(), [1.0, 1.0 if norm > clip else 0.0]]), clear
        w = client_weight(self.opts, reply.num_samples)
        return np.concatenate([(w * v).numpy(), [w]]), clear

    # server side ---------------------------------------------------------------------------
    def configure(self, rnd: int, client_ids: list[int]) -> dict[int, Payload]:
        self.sent = self.inner.configure(rnd, client_ids)
        return self.sent

    def dim(self, rnd: int, cid: int) -> int:
        spec = next(iter(self.inner.uplink_specs(rnd, cid).values()))
        n = sum(int(np.prod(ts.shape)) for ts in spec.tensors.values())
        return n + (2 if self.dp_client else 1)

    def clear_len(self) -> int:
        return 1 if self.method == "fedpeft" and self.opts["dp"] == "sample" else 0

    def finish(self, rnd: int, total: np.ndarray, clear: dict[int, list[float]], participants: list[int]) -> dict:
        if self.dp_client:
            return self._finish_dp(rnd, total, participants)
        weight = float(total[-1])
        if weight <= 0:
            return {"secagg_weight": weight}
        first = participants[0]
        spec = next(iter(self.inner.uplink_specs(rnd, first).values()))
        down = self.sent.get(first)
        values = {}
        for name, v in self._split(total[:-1] / weight, spec).items():
            ref = getattr(down, name, None)
            if isinstance(ref, torch.Tensor) and tuple(ref.shape) == tuple(v.shape):
                v = ref.to(torch.float64) + v
            values[name] = v.to(getattr(torch, spec.tensors[name].dtype))
        for name in spec.scalars:
            if name == "num_samples":
                values[name] = 1
            elif name == "epsilon":
                values[name] = max((c[0] for c in clear.values() if c), default=0.0)
        one = spec.cls(**values)
        # BAFFLE's replay log records who took part; the other methods need a single reply
        replies = {c: one for c in participants} if self.method == "baffle" else {first: one}
        return self.inner.aggregate(rnd, replies)

    @staticmethod
    def _split(vector: np.ndarray, spec: Spec) -> dict[str, torch.Tensor]:
        """A summed vector back into the reply's tensors (the order ``summand`` wrote them in)."""
        out, i = {}, 0
        flat = torch.from_numpy(np.ascontiguousarray(vector))
        for name in sorted(spec.tensors):
            shape = spec.tensors[name].shape
            n = int(np.prod(shape))
            out[name] = flat[i : i + n].view(shape)
            i += n
        return out

    def _finish_dp(self, rnd: int, total: np.ndarray, participants: list[int]) -> dict:
        from featherfl.algorithms.fedpeft import field_name
        from featherfl.seeding import generator

        inner, o = self.inner, self.opts
        n = total.shape[0] - 2
        expected = inner._expected_clients()
        std = inner.server_noise * o["dp_clip"] / expected
        parts = self._split(total[:n], next(iter(inner.uplink_specs(rnd, participants[0]).values())))
        summed = torch.cat([parts[field_name(name)].reshape(-1) for name in inner.names]).to(torch.float32)
        noisy = summed / expected + std * torch.randn(summed.shape, generator=generator(inner.ctx.seed, "dp-server", rnd))
        old = inner.flat()
        new = old + o["server_lr"] * noisy
        inner.load_flat(new)
        inner.dp_rounds += 1
        out = {"dp_clipped_fraction": float(total[n + 1]) / max(1, len(participants)), "update_norm": float((new - old).norm())}
        eps = inner.epsilon()
        if eps is not None:
            out["dp_epsilon"] = eps
        return out


@dataclass(frozen=True)
class TotalsDown(Payload):
    """FD under secure aggregation: the last aggregated round's per-label totals."""

    KIND = "fd.totals"
    CATEGORY = "logits"
    totals: torch.Tensor  # (L, L) float32: sum over devices of their mean output per label they hold
    holders: torch.Tensor  # (L,) int32: devices that held each label
    from_round: int  # the round these totals come from (0 = none yet)
    included: bool  # whether this device's upload is inside the totals


class FDSums:
    """FD: per-label sums; each device removes its own contribution (leave-one-out)."""

    KEY = "secagg-fd-own"

    def __init__(self, inner, cfg: Config):
        self.inner = inner
        self.L = inner.ctx.num_classes
        self.totals = torch.zeros(self.L, self.L)
        self.holders = torch.zeros(self.L, dtype=torch.int32)
        self.from_round = 0
        self.included: set[int] = set()

    # client side ---------------------------------------------------------------------------
    def client_down_specs(self, specs: dict[str, Spec]) -> dict[str, Spec]:
        L = self.L
        return {
            TotalsDown.KIND: Spec(
                TotalsDown,
                {"totals": TensorSpec("float32", (L, L), max_abs=1e12), "holders": TensorSpec("int32", (L,), min_value=0, max_value=2**31 - 1)},
                {"from_round": ScalarSpec("int", 0, 2**31 - 1), "included": ScalarSpec("bool")},
            )
        }

    def client_down(self, down: TotalsDown, state: dict) -> Payload:
        from featherfl.algorithms.fd import TeacherDown
        from featherfl.secagg.protocol import ProtocolError

        t, h = down.totals.to(torch.float64), down.holders.to(torch.float64)
        # uploads by round: the server's totals only move forward, so older ones are done with
        own_by_round = {r: v for r, v in state.get(self.KEY, {}).items() if r >= down.from_round}
        state[self.KEY] = own_by_round
        if down.included:
            own = own_by_round.get(down.from_round)
            if own is None:
                raise ProtocolError(f"the totals include this device's round-{down.from_round} upload, which it no longer holds")
            t = t - own["vectors"].to(torch.float64)
            h = h - own["present"].to(torch.float64)
        h = h.clamp_min(0)
        teacher = t / h.clamp_min(1).unsqueeze(1)
        teacher[h == 0] = 0
        return TeacherDown(teacher.to(torch.float32), h.round().to(torch.int32))

    def summand(self, rnd: int, reply: Payload, down: Payload, state: dict) -> tuple[np.ndarray, list[float]]:
        present = (reply.counts > 0).to(torch.float32)
        vectors = reply.logits * present.unsqueeze(1)
        state.setdefault(self.KEY, {})[rnd] = {"vectors": vectors.clone(), "present": present.clone()}
        return np.concatenate([vectors.reshape(-1).to(torch.float64).numpy(), present.to(torch.float64).numpy()]), []

    # server side ---------------------------------------------------------------------------
    def configure(self, rnd: int, client_ids: list[int]) -> dict[int, Payload]:
        return {c: TotalsDown(self.totals.clone(), self.holders.clone(), self.from_round, c in self.included) for c in client_ids}

    def dim(self, rnd: int, cid: int) -> int:
        return self.L * self.L + self.L

    def clear_len(self) -> int:
        return 0

    def finish(self, rnd: int, total: np.ndarray, clear: dict[int, list[float]], participants: list[int]) -> dict:
        from featherfl.algorithms.fd import dp_epsilon

        L = self.L
        self.totals = torch.from_numpy(total[: L * L].reshape(L, L)).to(torch.float32)
        self.holders = torch.from_numpy(np.rint(total[L * L :])).to(torch.int32).clamp_min(0)
        self.from_round = rnd
        self.included = set(participants)
        inner = self.inner
        for c in participants:
            inner.releases[c] += 1
        out = {"fd_labels_reported": float(self.holders.sum()) / max(1, len(participants))}
        cfg = inner.cfg
        if cfg["fd.logit_noise"] > 0:
            out["dp_epsilon"] = dp_epsilon(cfg["fd.logit_noise"], int(inner.releases.max()), cfg["fd.noise_delta"])
        return out

    def state_dict(self) -> dict:
        return {"totals": self.totals.clone(), "holders": self.holders.clone(), "from_round": self.from_round, "included": sorted(self.included)}

    def load_state_dict(self, s: dict) -> None:
        self.totals, self.holders = s["totals"].clone(), s["holders"].clone()
        self.from_round, self.included = int(s["from_round"]), set(int(c) for c in s["included"])


def adapter_for(inner, cfg: Config):
    return FDSums(inner, cfg) if cfg["algorithm"] == "fd" else WeightedMean(inner, cfg)
