"""Sample-level DP-SGD on a client (Abadi et al. 2016, Alg. 1).

Each step draws a Poisson sample (every example independently with rate q,
the sampling the RDP accountant assumes), computes per-example gradients of
the *trainable* tensors only (``torch.func``: ``vmap`` of ``grad`` through a
``functional_call``; a backward pass per example for models that
cannot be vmapped), clips each example's joint gradient to L2 norm C, sums,
adds N(0, (sigma C)^2) per coordinate and divides by the expected batch q n.
The optimizer (SGD with momentum, or Adam) then steps: post-processing, so
the privacy cost is that of the noisy gradients alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap


def per_sample_grads(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor, chunk: int = 64) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({name: (batch, *shape)} per-example gradients w.r.t. ``names``, per-example cross-entropy)."""
    params = dict(model.named_parameters())
    theta = {n: params[n].detach() for n in names}

    def loss_one(th, xi, yi):
        out = functional_call(model, th, (xi.unsqueeze(0),), strict=False)
        return F.cross_entropy(out, yi.unsqueeze(0))

    if not getattr(model, "_featherfl_no_vmap", False):
        fn = vmap(grad_and_value(loss_one), in_dims=(None, 0, 0))
        try:
            parts = [fn(theta, x[i : i + chunk], y[i : i + chunk]) for i in range(0, len(y), chunk)]
            return {n: torch.cat([g[n] for g, _ in parts]) for n in names}, torch.cat([v for _, v in parts])
        except RuntimeError:
            # data-dependent control flow inside the model (e.g. Hugging Face mask shortcuts) cannot be vmapped
            model._featherfl_no_vmap = True
    return _one_at_a_time(model, names, x, y)


def _one_at_a_time(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The same per-example gradients by a backward pass per example: slower, works for any model."""
    params = dict(model.named_parameters())
    grads: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    losses = []
    for i in range(len(y)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        gs = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        for n, g in zip(names, gs):
            grads[n].append(torch.zeros_like(params[n]) if g is None else g)
        losses.append(loss.detach())
    return {n: torch.stack(v) for n, v in grads.items()}, torch.stack(losses)


def dp_sgd_epochs(
    model: nn.Module,
    names: list[str],
    x: torch.Tensor,
    y: torch.Tensor,
    opt: torch.optim.Optimizer,
    steps: int,
    sample_rate: float,
    clip: float,
    noise: float,
    gen: torch.Generator,
) -> dict:
    """Run ``steps`` DP-SGD steps; returns the mean clean loss and the fraction of clipped examples."""
    params = dict(model.named_parameters())
    expected = max(sample_rate * len(y), 1e-12)
    model.train()
    losses, clipped, seen = [], 0, 0
    for _ in range(steps):
        idx = torch.nonzero(torch.rand(len(y), generator=gen) < sample_rate).flatten()
        summed = {n: torch.zeros_like(params[n]) for n in names}
        if len(idx):
            g, loss = per_sample_grads(model, names, x[idx], y[idx])
            losses.append(float(loss.mean()))
            norms = torch.sqrt(sum(g[n].flatten(1).pow(2).sum(1) for n in names))
            factor = (clip / (norms + 1e-6)).clamp(max=1.0)
            clipped += int((norms > clip).sum())
            seen += len(idx)
            for n in names:
                summed[n] = torch.einsum("b,b...->...", factor, g[n])
        opt.zero_grad(set_to_none=True)
        for n in names:
            noise_t = (torch.randn(summed[n].shape, generator=gen) * (noise * clip)).to(summed[n].device)
            params[n].grad = (summed[n] + noise_t) / expected
        opt.step()
    return {"train_loss": sum(losses) / max(len(losses), 1), "dp_clipped_fraction": clipped / max(seen, 1)}
