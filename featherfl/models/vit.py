"""A small Vision Transformer (Dosovitskiy et al. 2021) for the FedPEFT backbone.

Sized so that the parameter-efficient subsets are a small share of the model,
as with the ViT-B backbones of Sun et al. 2022 (e.g. bias + head of
``vit-tiny`` on digits is about 1.4 % of its weights). Pre-norm blocks,
learned position embeddings, a CLS token read out by a linear ``head``.

The forward pass is split so FedPEFT can hook in where its methods need to:
``embed`` (where shallow prompts join the sequence), ``blocks`` (before each
of which deep prompts are swapped in), ``features`` (the frozen feature
extractor a ``head``-only client may cache).
"""

from __future__ import annotations

import torch
from torch import nn

from featherfl.models.registry import register_model


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        out = attn.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, dim * mlp_ratio)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """ViT classifier. ``prompts`` (set by FedPEFT, default None) adds VPT prompt tokens."""

    def __init__(self, input_shape, num_classes, dim=96, depth=4, heads=3, mlp_ratio=4, patch=0):
        super().__init__()
        c, h, w = input_shape
        self.patch = patch or 4
        if h % self.patch or w % self.patch:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch}")
        self.arch = {"dim": dim, "depth": depth, "heads": heads, "mlp_ratio": mlp_ratio, "patch": self.patch}
        n = (h // self.patch) * (w // self.patch)
        self.patch_embed = nn.Conv2d(c, dim, self.patch, self.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.prompts: nn.Module | None = None

    @property
    def dim(self) -> int:
        return self.arch["dim"]

    def layers(self) -> nn.ModuleList:
        return self.blocks

    def add_prompts(self, n: int, deep: bool, gen: torch.Generator) -> None:
        from featherfl.models.peft_modules import PromptTokens

        self.prompts = PromptTokens(len(self.blocks), n, self.dim, deep, gen)

    def add_lora(self, rank: int, alpha: float, targets: list[str], seed: int) -> None:
        from featherfl.models.peft_modules import add_lora

        if add_lora(self.blocks, targets or ["qkv"], rank, alpha, torch.Generator().manual_seed(seed)) == 0:
            raise ValueError(f"no linear layer named {targets} in the ViT blocks (have qkv, proj, fc1, fc2)")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(len(t), -1, -1), t], 1)
        return t + self.pos_embed

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The CLS token after the last block and norm: what the classifier head reads."""
        t = self.embed(x)
        for i, blk in enumerate(self.blocks):
            if self.prompts is not None:
                t = self.prompts(i, t)
            t = blk(t)
        return self.norm(t[:, 0])

    def forward(self, x):
        return self.head(self.features(x))


@register_model("vit-tiny")
def vit_tiny(input_shape, num_classes, width=0, **_):
    """4 blocks, width 96 (``model.width`` overrides), 3 heads, 4x4 patches."""
    return ViT(tuple(input_shape), num_classes, dim=width or 96)
