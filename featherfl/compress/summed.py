"""Compression under secure aggregation: what a client masks when its update is compressed, and
how the server finishes the round from the masked sum alone.

Under ``secagg.protocol`` the server never sees one client's upload, only the sum, so a
compressor composes only when the sum of the clients' compressed uploads is the compressed form
of something the server can use. Two do:

- ``randk`` with indices shared by every client of a round (drawn from the run seed and the
  round, not the client): the masked vector is each client's k values at those indices, so the
  sum is the sum of the k values, which the server scatters back (times n/k without error
  feedback, the unbiased estimate of Stich et al. 2018).
- ``qsgd`` with a scale shared by every client of a round. QSGD (Alistarh et al. 2017) sends
  levels relative to each client's own norm, and a sum of levels at different norms is not the
  sum of any values. Here every client of a round quantises layer l against the same scale C_l
  (a power of two the server sends with the masking set): level = stochastic rounding of
  s x clip(x / C_l, -1, 1), s = 2^(bits-1) - 1, unbiased for |x| <= C_l. The masked vector holds
  only whole numbers (levels times the client's weight, counts), so the words need only hold
  n x s x max weight: for 4-bit QSGD (s = 7) 8-bit words up to 18 clients per round and
  16-bit words up to about 4,600. The
  server's sum of levels times C_l / s is the sum of the dequantised updates.

  The scale follows the updates from round to round without revealing any one client's:
  each client also adds a one-hot histogram, per layer, of where its largest |x| lies on a
  power-of-two grid around C_l (2^-12 C_l ... 2^2 C_l, and above). The server learns only how
  many clients fall in each cell, and sets the next round's C_l to the top of the highest
  occupied cell, times two (one cell of headroom, so updates that grow a little from one round
  to the next are not clipped). The first round uses
  ``compress.shared_scale``. A client whose update exceeds C_l anyway is clipped (counted in
  ``compress_clipped_clients``; with error feedback what was clipped stays in its residual).

topk (each client's own indices), sign (each client's own scale, or a vote) and powersgd (its
factors are not linear in the update) cannot be summed this way: refused in one line
(``featherfl.compress.check``).
"""

from __future__ import annotations

import numpy as np
import torch

from featherfl.algorithms.summation import Range, WeightedMean, client_weight, max_weight
from featherfl.compress.codecs import keep_count, qsgd_levels, random_indices
from featherfl.config import ConfigError
from featherfl.seeding import derive_seed

#: the power-of-two grid of the scale histogram: cell j holds max|x| <= C 2^(j - GRID_LOW)
GRID_LOW, GRID_HIGH = 12, 2
CELLS = GRID_LOW + GRID_HIGH + 2  # the last cell: above C 2^GRID_HIGH
#: cells of headroom above the highest occupied one in the next round's scale
HEADROOM = 1
#: ``count_entries`` of a vector of whole numbers only: more than any vector's length
EVERY = 1 << 40
#: this feature's client state under summation: the error-feedback residual
STATE = "compress-sum"


class SummedCompression(WeightedMean):
    """Common to both: the layout (the model's layers) of the update and the error-feedback residual."""

    METHOD = ""
    #: ``featherfl.compress.wrapper.Layouts``: the update's tensors as the model's layers (set by ``compose``)
    LAYOUTS: type

    def __init__(self, ctx, name: str, server=None):
        super().__init__(ctx, name, server)
        from featherfl.compress import settings

        self.settings = settings(ctx.cfg)
        self.layouts = self.LAYOUTS(ctx)

    @classmethod
    def check(cls, cfg, name: str) -> None:
        super().check(cfg, name)
        if cfg.section(name).get("dp") == "client":
            raise ConfigError(f"config key 'compress.method': {cfg['compress.method']} under secure aggregation with {name}.dp = client is not supported: the clipped update's DP sum would be compressed after the clipping its noise is calibrated to")

    def layout(self, spec_tensors: dict) -> list[tuple[str, tuple[int, ...]]]:
        return self.layouts({n: tuple(s) for n, s in spec_tensors.items()})

    def client_layout(self, reply) -> list[tuple[str, tuple[int, ...]]]:
        return self.layout({n: tuple(getattr(reply, n).shape) for n in sorted(reply.tensor_fields())})

    def server_layout(self, rnd: int, cid: int) -> list[tuple[str, tuple[int, ...]]]:
        spec = next(iter(self.server.uplink_specs(rnd, cid).values()))
        return self.layout({n: tuple(ts.shape) for n, ts in spec.tensors.items()})

    def residual(self, state: dict, u: np.ndarray) -> np.ndarray:
        if not self.settings.error_feedback:
            return u
        r = state.get(STATE, {}).get("residual")
        return u + r.numpy() if r is not None and r.numel() == u.size else u

    def keep_residual(self, state: dict, u: np.ndarray, sent: np.ndarray) -> None:
        if self.settings.error_feedback:
            state.setdefault(STATE, {})["residual"] = torch.from_numpy(u - sent)

    def finish_dense(self, rnd, weighted_sum: np.ndarray, weight: float, clear, participants) -> dict:
        """The method's own finish from sum_c w_c v_c (dense) and sum_c w_c."""
        return super().finish(rnd, np.concatenate([weighted_sum, [weight]]), clear, participants)


class SummedRandK(SummedCompression):
    """randk with the round's indices shared by every client (module docstring)."""

    METHOD = "randk"

    def indices(self, rnd: int, layout) -> list[np.ndarray]:
        out, start = [], 0
        for key, shape in layout:
            n = int(np.prod(shape)) if shape else 1
            k = keep_count(n, self.settings.ratio) if n else 0
            out.append(start + random_indices(self.settings, rnd, -1, key, n, k))  # -1: every client alike
            start += n
        return out

    def summand(self, rnd, reply, down, state):
        u = self.residual(state, self.update_vector(reply, down).numpy())
        idx = np.concatenate(self.indices(rnd, self.client_layout(reply)))
        sent = np.zeros_like(u)
        sent[idx] = u[idx]
        self.keep_residual(state, u, sent)
        w = client_weight(self.opts, reply.num_samples)
        clear = [float(reply.epsilon)] if hasattr(reply, "epsilon") else []
        return np.concatenate([w * u[idx], [w]]), clear

    def dim(self, rnd, cid):
        return sum(len(i) for i in self.indices(rnd, self.server_layout(rnd, cid))) + 1

    def finish(self, rnd, total, clear, participants):
        layout = self.server_layout(rnd, participants[0])
        dense = np.zeros(sum(int(np.prod(s)) if s else 1 for _, s in layout))
        idx = np.concatenate(self.indices(rnd, layout))
        dense[idx] = total[:-1]
        if not self.settings.error_feedback:  # unbiased: each entry is kept with probability k/n
            start = 0
            for key, shape in layout:
                n = int(np.prod(shape)) if shape else 1
                k = keep_count(n, self.settings.ratio) if n else 0
                dense[start : start + n] *= n / max(k, 1)
                start += n
        return self.finish_dense(rnd, dense, float(total[-1]), clear, participants)


class SummedQSGD(SummedCompression):
    """QSGD with a scale per layer shared by every client of a round (module docstring)."""

    METHOD = "qsgd"

    def __init__(self, ctx, name: str, server=None):
        super().__init__(ctx, name, server)
        self.levels = qsgd_levels(self.settings.bits)
        self.first = float(ctx.cfg["compress.shared_scale"])
        self.scales: np.ndarray | None = None  # the server's scale per layer for the next round

    @classmethod
    def value_range(cls, cfg, name: str) -> Range | None:
        """Whole numbers only: levels times the weight, and counts."""
        w = max_weight(cfg.section(name))
        if w is None:
            return None
        s = qsgd_levels(cfg["compress.bits"])
        return Range(float(w * s), 1.0, w * s)

    def count_entries(self) -> int:
        return EVERY

    # the masked vector: [w * levels (dim), histogram (layers x CELLS), clipped (1), w (1)]
    def summand(self, rnd, reply, down, state):
        layout = self.client_layout(reply)
        scales = np.asarray(self.params, dtype=np.float64)
        if scales.size != len(layout):
            raise ValueError(f"qsgd under secure aggregation: {scales.size} shared scales for {len(layout)} layers")
        u = self.residual(state, self.update_vector(reply, down).numpy())
        rng = np.random.default_rng(derive_seed(self.settings.seed, "compress-qsgd-sum", rnd, self.cid))
        levels, sent, hist, clipped, start = np.zeros_like(u), np.zeros_like(u), np.zeros((len(layout), CELLS)), 0.0, 0
        for i, (key, shape) in enumerate(layout):
            n = int(np.prod(shape)) if shape else 1
            x, c = u[start : start + n], scales[i]
            top = float(np.abs(x).max()) if n else 0.0
            clipped = max(clipped, float(top > c))
            scaled = np.clip(x / c, -1.0, 1.0) * self.levels
            low = np.floor(scaled)
            q = low + (rng.random(n) < (scaled - low))
            levels[start : start + n] = q
            sent[start : start + n] = q * c / self.levels
            hist[i, cell(top, c)] = 1.0
            start += n
        self.keep_residual(state, u, sent)
        w = client_weight(self.opts, reply.num_samples)
        clear = [float(reply.epsilon)] if hasattr(reply, "epsilon") else []
        return np.concatenate([w * levels, hist.reshape(-1), [clipped, w]]), clear

    def dim(self, rnd, cid):
        layout = self.server_layout(rnd, cid)
        return sum(int(np.prod(s)) if s else 1 for _, s in layout) + len(layout) * CELLS + 2

    def round_params(self, rnd: int) -> list[float]:
        layout = self.server_layout(rnd, 0)
        if self.scales is None or len(self.scales) != len(layout):
            self.scales = np.full(len(layout), self.first)
        return [float(c) for c in self.scales]

    def finish(self, rnd, total, clear, participants):
        layout = self.server_layout(rnd, participants[0])
        scales = np.asarray(self.round_params(rnd))
        d = sum(int(np.prod(s)) if s else 1 for _, s in layout)
        dense, start = np.zeros(d), 0
        for i, (key, shape) in enumerate(layout):
            n = int(np.prod(shape)) if shape else 1
            dense[start : start + n] = total[start : start + n] * scales[i] / self.levels
            start += n
        hist = total[d : d + len(layout) * CELLS].reshape(len(layout), CELLS)
        clipped, weight = float(total[-2]), float(total[-1])
        self.scales = np.array([next_scale(c, h) for c, h in zip(scales, hist)])
        metrics = self.finish_dense(rnd, dense, weight, clear, participants)
        return {**metrics, "compress_clipped_clients": int(round(clipped)), "compress_scale_max": float(self.scales.max())}

    def state_dict(self):
        return {"scales": torch.from_numpy(self.scales.copy())} if self.scales is not None else None

    def load_state_dict(self, state):
        if "scales" in state:
            self.scales = state["scales"].numpy().astype(np.float64)


def cell(top: float, scale: float) -> int:
    """The histogram cell of a layer whose largest |x| is ``top``: the first j with top <= scale 2^(j - GRID_LOW)."""
    if top <= 0:
        return 0
    j = int(np.ceil(np.log2(top / scale) - 1e-12)) + GRID_LOW
    return int(min(max(j, 0), CELLS - 1))


def next_scale(scale: float, hist: np.ndarray) -> float:
    """Twice the top of the highest occupied cell (one cell of headroom: updates that grow a
    little from one round to the next are not clipped); grown by the grid's span when some
    client was above it."""
    occupied = np.flatnonzero(np.rint(hist) > 0)
    if occupied.size == 0:
        return scale
    j = int(occupied[-1])
    return float(scale * 2.0 ** (j - GRID_LOW + HEADROOM)) if j < CELLS - 1 else float(scale * 2.0 ** (GRID_HIGH + 1))


SUMMED = {"randk": SummedRandK, "qsgd": SummedQSGD}


def compose(summation: type | None, method: str, layouts: type) -> type | None:
    """The method's summation with this compressor inside it (None where the method's sum is not
    a mean of dense updates). ``layouts``: how an update splits into the model's layers."""
    if summation is None or method not in SUMMED:
        return summation
    if not issubclass(summation, WeightedMean):
        return None
    base = SUMMED[method]
    return type(f"{base.__name__}{summation.__name__}", (base, summation), {"LAYOUTS": layouts})

