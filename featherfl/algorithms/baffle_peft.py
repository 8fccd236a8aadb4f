"""Forward-only fine-tuning of a pretrained backbone: BAFFLE on FedPEFT's parameter subsets
(``baffle.peft = true``), and inference-only clients (``baffle.client_precision``).

The model is FedPEFT's (``fedpeft.build_peft_model``: the backbone from ``model.pretrained``
with the ``fedpeft.method`` modules added and everything else frozen). BAFFLE's flat
vector (``zo.FlatModel``) holds only the tensors with ``requires_grad``, so directions,
perturbations, estimates and the weights downlink cover the trainable subset alone;
the frozen backbone is built identically on every party from the pretrained files and
the run's seed and never travels. This is the regime MeZO (Malladi et al. 2023) shows
zeroth-order estimates work in: a pretrained model, few trained parameters.

Client precision (BAFFLE's claim that clients need only inference hardware, Feng et al.
2023, Sec. 1): the client evaluates its losses on a low-precision copy while the server
keeps fp32. ``int8`` swaps every frozen ``nn.Linear`` for a dynamically quantized one
(int8 weights per output channel, activations quantized per batch, PyTorch's
``quantized::linear_dynamic``), the trainable bias (if any) added in fp32; ``bf16`` runs
the forward under CPU autocast to bfloat16. The uplink is still the K loss differences,
and the server (or a replica) replays only seeds + scalars, so the client's low-precision
losses never break the bit-exact agreement of server and client weights.

With ``fedpeft.method = head`` and ``fedpeft.cache_features`` the frozen backbone's features
of each client's data are computed once (on the client's precision) and the K+1 forward
passes per estimate run the linear head only: the linear-probe objective on a cached
feature path.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from featherfl.algorithms import zo
from featherfl.config import ConfigError


class Int8Linear(nn.Module):
    """A frozen ``nn.Linear`` as PyTorch's dynamic int8 linear (weights int8 per output channel,
    activations quantized on the fly); the bias stays the original fp32 parameter, so a
    trainable bias is still a view into BAFFLE's flat vector."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        w = lin.weight.detach().float()
        scale = (w.abs().amax(1) / 127.0).clamp_min(1e-12).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(q, None)
        self.in_features, self.out_features = lin.in_features, lin.out_features
        self.bias = lin.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x.contiguous(), self._packed, True)
        return y if self.bias is None else y + self.bias


def quantize_frozen_linears(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` whose weight is frozen by :class:`Int8Linear`, in place; returns how many.
    A Linear whose weight trains (a head, ``full``) stays fp32: its weights move every pass."""
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Linear and not child.weight.requires_grad:
                swaps.append((parent, name, child))
    for parent, name, child in swaps:
        setattr(parent, name, Int8Linear(child))
    return len(swaps)


class PrecisionFlat(zo.FlatModel):
    """``zo.FlatModel`` whose loss runs under bf16 autocast (``bf16``), or plainly (``fp32`` / ``int8``,
    where int8 lives in the model's layers)."""

    def __init__(self, model: nn.Module, precision: str):
        super().__init__(model)
        self.precision = precision

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16" else nullcontext()

    def current_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        with self.autocast():
            logits = self.model(x)
        return float(F.cross_entropy(logits.float(), y))


def validate(cfg) -> None:
    """One-line refusals for settings that cannot work."""
    from featherfl.data.sources import is_text

    peft = cfg["baffle.peft"]
    prec = cfg["baffle.client_precision"]
    if not peft and is_text(cfg):
        raise ConfigError("config key 'baffle.peft': text data need a pretrained encoder; use --set baffle.peft=true (with fedpeft.method and model.pretrained)")
    if prec == "int8" and not peft:
        raise ConfigError("config key 'baffle.client_precision': int8 quantizes a frozen pretrained backbone; use it with --set baffle.peft=true")
    if prec == "int8" and cfg["fedpeft.method"] == "full":
        raise ConfigError("config key 'baffle.client_precision': int8 needs frozen weights to quantize, and fedpeft.method=full trains them all; use bf16 or fp32")


def uses_cached_head(cfg) -> bool:
    return bool(cfg["baffle.peft"]) and cfg["fedpeft.method"] == "head" and bool(cfg["fedpeft.cache_features"])


def client_flat(model: nn.Module, cfg) -> PrecisionFlat:
    """The client's forward path: its precision applied, over the head alone when features are cached."""
    prec = cfg["baffle.client_precision"]
    if prec == "int8":
        quantize_frozen_linears(model)
    return PrecisionFlat(model.head if uses_cached_head(cfg) else model, prec)


@torch.no_grad()
def cached_features(model: nn.Module, f: PrecisionFlat, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The frozen backbone's features of ``x`` at the client's precision, in fp32."""
    was = model.training
    model.eval()
    with torch.inference_mode(), f.autocast():
        out = torch.cat([model.features(x[i : i + batch_size]).float() for i in range(0, len(x), batch_size)])
    model.train(was)
    return out.clone()
