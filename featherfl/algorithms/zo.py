"""Zeroth-order (forward-only) gradient estimation from seeded random directions.

BAFFLE (Feng et al. 2023, "Does Federated Learning Really Need Backpropagation?",
Sec. 3, Eq. 3-5) estimates the gradient of a loss L at weights W with Stein's
identity, using K Gaussian perturbations delta_k = sigma * eps_k on one mini-batch:

    forward difference:  g = 1/(K sigma^2) * sum_k [L(W + delta_k) - L(W)] * delta_k
    central difference:  g = 1/(K sigma^2) * sum_k [(L(W + delta_k) - L(W - delta_k)) / 2] * delta_k

Since delta_k = sigma * eps_k this is g = 1/(K sigma) * sum_k d_k eps_k, with d_k the
loss difference. Every eps_k is a pure function of an integer seed, so a party that
knows the seeds needs only the K scalars d_k to rebuild g: that is what makes the
uplink K float32 values.

Memory stays O(parameters), never O(K x parameters): the weights live in one flat
vector that the model's parameters are views of, and each eps_k is generated from its
seed a chunk at a time (``CHUNK`` values) and written as W + sigma eps_k straight into
that vector, so no direction buffer the size of the model exists (the in-place trick
MeZO, Malladi et al. 2023, uses). Forward passes run under ``torch.inference_mode``,
so no autograd graph is built and no ``.grad`` is ever touched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from featherfl.seeding import derive_seed


def direction_seed(base: int, step: int, k: int) -> int:
    """Seed of direction k at local step ``step`` under the round's base seed."""
    return derive_seed(base, step, k)


#: Values of a direction generated at a time. A model of at most this many parameters gets
#: exactly ``torch.randn(numel)`` from the seed; larger ones the same stream in pieces.
CHUNK = 1 << 16


def direction_chunks(seed: int, numel: int, buf: torch.Tensor):
    """Yield (start, stop, z): eps ~ N(0, I) for ``seed`` in ``CHUNK``-sized pieces written into
    ``buf`` (at least ``min(CHUNK, numel)`` values). Same seed, same bits, on every party."""
    g = torch.Generator().manual_seed(seed)
    for a in range(0, numel, CHUNK):
        b = min(a + CHUNK, numel)
        yield a, b, torch.randn(b - a, generator=g, out=buf[: b - a])


class FlatModel:
    """A model whose trainable parameters are views into one flat vector, ``flat``.

    Writing weights into ``flat`` (e.g. ``torch.add(theta, eps, alpha=sigma, out=f.flat)``)
    moves the model with no per-parameter copies and no extra model. A plain
    ``model(x)`` then runs at full speed: ``torch.func.functional_call`` did the same
    job here at about twice the cost of a forward pass on small models (measured on
    the digits MLP), which BAFFLE pays K+1 times per estimate.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        params = [p for p in model.parameters() if p.requires_grad]
        self.numel = sum(p.numel() for p in params)
        with torch.no_grad():
            self.flat = torch.cat([p.detach().reshape(-1).float() for p in params]) if params else torch.zeros(0)
            i = 0
            for p in params:
                p.data = self.flat[i : i + p.numel()].view_as(p)
                i += p.numel()

    def get(self) -> torch.Tensor:
        return self.flat.clone()

    @torch.no_grad()
    def put(self, theta: torch.Tensor) -> None:
        self.flat.copy_(theta)

    def current_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(F.cross_entropy(self.model(x), y))


def loss_differences(
    f: FlatModel,
    theta: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    seeds: list[int],
    sigma: float,
    difference: str = "forward",
    accumulate: torch.Tensor | None = None,
) -> torch.Tensor:
    """The K loss differences d_k on one mini-batch (Eq. 4 forward / Eq. 5 central).

    Forward difference costs K+1 forward passes, central 2K. The model runs in eval
    mode so that dropout cannot make L(W + delta) and L(W) disagree by chance (and no
    global RNG is touched); BatchNorm is refused upstream. ``theta`` (the unperturbed
    weights) stays untouched, and W + sigma eps_k is written chunk by chunk straight
    into the model's own flat parameter vector, so restoring W is the next write, exact,
    with no subtraction round-off; the vector is left holding the last perturbed weights
    (callers ``put`` what they need next). The only other memory is one ``CHUNK``.
    When ``accumulate`` is given, sum_k d_k eps_k is added into it (eps_k regenerated from
    its seed) with exactly the arithmetic :func:`reconstruct` uses, so a client's own local
    step and the server's rebuild from scalars agree bit for bit.
    """
    model = f.model
    was = model.training
    model.eval()
    out = torch.empty(len(seeds), dtype=torch.float32)
    numel = theta.numel()
    buf = torch.empty(min(CHUNK, numel))
    flat = f.flat
    with torch.inference_mode():
        base = 0.0
        if difference == "forward":
            flat.copy_(theta)
            base = f.current_loss(x, y)
        for k, s in enumerate(seeds):
            for a, b, z in direction_chunks(s, numel, buf):
                torch.add(theta[a:b], z, alpha=sigma, out=flat[a:b])
            plus = f.current_loss(x, y)
            if difference == "central":
                for a, b, z in direction_chunks(s, numel, buf):
                    torch.add(theta[a:b], z, alpha=-sigma, out=flat[a:b])
                out[k] = (plus - f.current_loss(x, y)) / 2.0
            else:
                out[k] = plus - base
            if accumulate is not None:
                d = float(out[k])
                for a, b, z in direction_chunks(s, numel, buf):
                    accumulate[a:b].add_(z, alpha=d)
    model.train(was)
    return out


def reconstruct(diffs: torch.Tensor, seeds: list[int], numel: int, sigma: float, clip: float = 0.0) -> torch.Tensor:
    """Rebuild g = 1/(K sigma) * sum_k d_k eps_k from the K scalars and their seeds."""
    g = torch.zeros(numel)
    buf = torch.empty(min(CHUNK, numel))
    for d, s in zip(diffs.tolist(), seeds):
        for a, b, z in direction_chunks(s, numel, buf):
            g[a:b].add_(z, alpha=d)
    return finish_estimate(g, len(seeds), sigma, clip)


def finish_estimate(g: torch.Tensor, k: int, sigma: float, clip: float = 0.0) -> torch.Tensor:
    """Scale the accumulated sum by 1/(K sigma); with ``clip`` > 0, rescale it so that its
    infinity norm is at most ``clip``. Rescaling keeps the estimate's direction, where
    clamping coordinates would bend it (the paper's code clips with
    ``clip_grad_norm_(norm_type=inf)``)."""
    g.mul_(1.0 / (k * sigma))
    if clip > 0 and g.numel():
        top = float(g.abs().max())
        if top > clip:
            g.mul_(clip / top)
    return g
