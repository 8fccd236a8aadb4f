"""Aggregation rules over stacked client vectors (weights, gradients, BAFFLE scalars, FD logits).

``mean`` is the sample-weighted average of FedAvg (McMahan et al. 2017, Alg. 1).
The robust rules bound what a minority of Byzantine clients can do:
coordinate-wise ``median`` and ``trimmed-mean`` (Yin et al. 2018) and
``norm-clip`` (clip each client's difference from a reference to norm c,
Sun et al. 2019).
"""

from __future__ import annotations

import torch

from featherfl.config import ConfigError, Field

RULES = ("mean", "median", "trimmed-mean", "norm-clip")


def aggregation_fields(section: str) -> dict[str, Field]:
    return {
        f"{section}.aggregation": Field("str", "mean", "How client vectors are combined.", choices=RULES),
        f"{section}.trim_beta": Field("float", 0.1, "trimmed-mean: fraction cut from each end per coordinate.", min=0.0, max=0.49),
        f"{section}.clip_norm": Field("float", 10.0, "norm-clip: max L2 norm of each client's difference from the reference.", min=0.0, min_exclusive=True),
    }


def combine(
    vectors: torch.Tensor,
    weights: torch.Tensor,
    rule: str = "mean",
    beta: float = 0.1,
    clip: float = 10.0,
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """Combine ``vectors`` (clients x ...) with sample ``weights`` (clients,) by ``rule``."""
    if vectors.shape[0] == 0:
        raise ValueError("no vectors to combine")
    w = weights.to(vectors.dtype)
    w = w / w.sum()
    shape = [-1] + [1] * (vectors.dim() - 1)
    if rule == "mean":
        return (vectors * w.view(shape)).sum(0)
    if rule == "median":
        return vectors.median(0).values if vectors.shape[0] % 2 else vectors.sort(0).values[vectors.shape[0] // 2 - 1 : vectors.shape[0] // 2 + 1].mean(0)
    if rule == "trimmed-mean":
        n = vectors.shape[0]
        k = int(beta * n)
        if n - 2 * k <= 0:
            k = (n - 1) // 2
        s = vectors.sort(0).values
        return s[k : n - k].mean(0)
    if rule == "norm-clip":
        ref = torch.zeros_like(vectors[0]) if reference is None else reference
        d = vectors - ref
        norms = d.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = (clip / norms).clamp(max=1.0)
        return ref + (d * scale.view(shape) * w.view(shape)).sum(0)
    raise ConfigError(f"unknown aggregation rule {rule!r}; expected one of {', '.join(RULES)}")
