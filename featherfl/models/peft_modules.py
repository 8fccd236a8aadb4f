"""Parameter-efficient fine-tuning modules and the rule that picks what trains.

FedPEFT (Sun et al. 2022, Sec. 3) freezes a pretrained backbone and trains
(and communicates) only a small set of tensors. The methods it compares:

- ``full``: every weight (the baseline);
- ``head``: a new classifier only (linear probing);
- ``bias``: every bias term plus the head (BitFit, Ben Zaken et al. 2022);
- ``adapter``: bottleneck adapters after each block's MLP (Houlsby et al. 2019),
  zero-initialised so training starts from the pretrained function;
- ``prompt``: learnable prompt tokens (VPT, Jia et al. 2022): ``deep`` gives
  every layer its own tokens, ``shallow`` only the input sequence;
- ``lora``: low-rank updates of chosen linear layers (Hu et al. 2022), B = 0 at
  init so, again, the pretrained function is unchanged.

A backbone model plugs in by offering ``features(x)``, ``head`` (nn.Linear),
``layers()`` (its transformer blocks), ``add_prompts(n, deep, gen)`` and
``add_lora(rank, alpha, targets, seed)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

METHODS = ("full", "head", "bias", "adapter", "prompt", "lora")


class Adapter(nn.Module):
    """x + up(GELU(down(x))) with ``up`` zero-initialised: the identity at init."""

    def __init__(self, dim: int, reduction: int, gen: torch.Generator):
        super().__init__()
        hidden = max(1, dim // reduction)
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        with torch.no_grad():
            bound = 1 / math.sqrt(dim)
            self.down.weight.copy_(torch.empty(hidden, dim).uniform_(-bound, bound, generator=gen))
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, x):
        return x + self.up(self.act(self.down(x)))


class AdaptedLinear(nn.Module):
    """A frozen linear layer followed by an adapter (placed on the MLP's output, Houlsby et al. Fig. 2)."""

    def __init__(self, base: nn.Linear, adapter: Adapter):
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x):
        return self.adapter(self.base(x))


class LoRALinear(nn.Module):
    """base(x) + (alpha / r) * B A x with A ~ Kaiming-uniform (seeded) and B = 0 (Hu et al. 2022, Sec. 4.1)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, gen: torch.Generator):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        bound = 1 / math.sqrt(base.in_features)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features).uniform_(-bound, bound, generator=gen))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale


class PromptTokens(nn.Module):
    """VPT prompts inserted after the CLS token: ``(layers, n, dim)`` for deep, ``(1, n, dim)`` for shallow.

    ``__call__(i, tokens)`` is applied before block ``i``: block 0 gets the
    prompts inserted; with ``deep`` every later block gets the previous
    block's prompt outputs replaced by its own (Jia et al. 2022, Eq. 5-6).
    """

    def __init__(self, layers: int, n: int, dim: int, deep: bool, gen: torch.Generator):
        super().__init__()
        self.n = n
        self.deep = deep
        bound = math.sqrt(6.0 / (n + dim))
        self.tokens = nn.Parameter(torch.empty(layers if deep else 1, n, dim).uniform_(-bound, bound, generator=gen))

    def forward(self, i: int, t: torch.Tensor) -> torch.Tensor:
        if i == 0:
            p = self.tokens[0].expand(len(t), -1, -1)
            return torch.cat([t[:, :1], p, t[:, 1:]], 1)
        if self.deep:
            p = self.tokens[i].expand(len(t), -1, -1)
            return torch.cat([t[:, :1], p, t[:, 1 + self.n :]], 1)
        return t


def mlp_output_linear(block: nn.Module, dim: int) -> tuple[nn.Module, str]:
    """The block's MLP output projection: its last nn.Linear mapping a wider hidden size back to ``dim``.

    One rule that finds ``mlp.fc2`` in the project's ViT and ``output.dense`` in
    BERT-family encoders, so adapters are placed the same way in both.
    """
    found = None
    for name, m in block.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == dim and m.in_features > dim:
            found = name
    if found is None:
        raise ValueError(f"no MLP output projection to width {dim} in {type(block).__name__}")
    parent_name, _, child = found.rpartition(".")
    parent = block.get_submodule(parent_name) if parent_name else block
    return parent, child


def add_adapters(model: nn.Module, dim: int, reduction: int, shared: bool, gen: torch.Generator) -> None:
    """One adapter per block (or one shared by all blocks) after each MLP output projection."""
    one = Adapter(dim, reduction, gen) if shared else None
    for block in model.layers():
        parent, child = mlp_output_linear(block, dim)
        parent.add_module(child, AdaptedLinear(getattr(parent, child), one or Adapter(dim, reduction, gen)))


def add_lora(model: nn.Module, targets: list[str], rank: int, alpha: float, gen: torch.Generator) -> int:
    """Wrap every nn.Linear whose name ends with one of ``targets``; returns how many were wrapped."""
    wrapped = 0
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets) and not name.startswith("head"):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            parent.add_module(child, LoRALinear(m, rank, alpha, gen))
            wrapped += 1
    return wrapped


def is_trainable(method: str, name: str) -> bool:
    """Which parameters a method trains, by name (after its modules were added)."""
    if method == "full" or name.startswith("head."):
        return True
    if method == "bias":
        return name.endswith("bias")
    if method == "adapter":
        return ".adapter." in name
    if method == "prompt":
        return name.startswith("prompts.")
    if method == "lora":
        return "lora_" in name
    return False


def apply_method(model: nn.Module, method: str, opts: dict, seed: int) -> list[str]:
    """Add the method's modules, freeze everything else; return the trainable parameter names in order."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    gen = torch.Generator().manual_seed(seed)
    if method == "adapter":
        add_adapters(model, model.dim, opts["adapter_reduction"], opts["adapter_shared"], gen)
    elif method == "prompt":
        model.add_prompts(opts["prompt_tokens"], opts["prompt_depth"] == "deep", gen)
    elif method == "lora":
        model.add_lora(opts["lora_rank"], float(opts["lora_alpha"]), list(opts["lora_targets"]), seed)
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(is_trainable(method, name))
        if p.requires_grad:
            names.append(name)
    return names
