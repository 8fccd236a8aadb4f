"""Client-level DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models", Alg. 1 with the fixed-denominator estimator).

Each client's update is clipped to L2 norm ``clip``; the server sums them,
divides by the *expected* number of participants ``expected`` (not the number
that replied, so one client's influence is bounded by ``clip / expected``),
and adds Gaussian noise with standard deviation ``noise * clip / expected``.
Accounting: the sampled Gaussian mechanism with rate = expected / clients,
one step per round.
"""

from __future__ import annotations

import torch


def clip_rows(deltas: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale each row to L2 norm at most ``clip``; also returns the original norms."""
    norms = deltas.norm(dim=1)
    scale = (clip / norms.clamp_min(1e-12)).clamp(max=1.0)
    return deltas * scale.unsqueeze(1), norms


def dp_fedavg_update(deltas: torch.Tensor, clip: float, noise: float, expected: float, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    clipped, norms = clip_rows(deltas, clip)
    mean = clipped.sum(0) / expected
    std = noise * clip / expected
    noisy = mean + std * torch.randn(mean.shape, generator=gen)
    return noisy, {"dp_clipped_fraction": float((norms > clip).float().mean()), "dp_update_norm_median": float(norms.median())}
