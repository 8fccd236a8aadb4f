"""Model registry: a method or a user adds an architecture in one place.

``build_model(name, input_shape, num_classes, norm=..., activation=..., width=...)``
returns a ``torch.nn.Module`` mapping a batch of inputs to class logits.
"""

from __future__ import annotations

import torch
from torch import nn

from featherfl.models.registry import REGISTRY as _REGISTRY
from featherfl.models.registry import register_model

__all__ = ["register_model", "model_names", "build_model", "flat_state", "load_flat_state", "state_tensors", "count_parameters", "has_batchnorm"]

def model_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **opts) -> nn.Module:
    _load_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](input_shape=tuple(input_shape), num_classes=num_classes, **opts)


def _load_builtin() -> None:
    import featherfl.models.vision  # noqa: F401  (registers on import)

    try:
        import featherfl.models.vit  # noqa: F401
    except ImportError:
        pass


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def state_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Trainable parameters plus floating-point buffers (e.g. BatchNorm statistics), in a fixed order."""
    out = [(n, p) for n, p in model.named_parameters()]
    out += [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
    return out


def flat_state(model: nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).float() for _, t in state_tensors(model)]).cpu()


@torch.no_grad()
def load_flat_state(model: nn.Module, vec: torch.Tensor) -> None:
    tensors = state_tensors(model)
    need = sum(t.numel() for _, t in tensors)
    if need != vec.numel():
        raise ValueError(f"flat state has {vec.numel()} values, model needs {need}")
    i = 0
    for _, t in tensors:
        n = t.numel()
        t.copy_(vec[i : i + n].view_as(t))
        i += n


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
