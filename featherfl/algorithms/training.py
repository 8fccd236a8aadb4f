"""Local training and evaluation loops shared by the backprop methods."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from featherfl.config import Field
from featherfl.devices import model_device


def optimizer_fields(section: str, lr: float, optimizer: str = "sgd", momentum: float = 0.0) -> dict[str, Field]:
    return {
        f"{section}.lr": Field("float", lr, "Client learning rate.", min=0.0, min_exclusive=True),
        f"{section}.optimizer": Field("str", optimizer, "Client optimizer.", choices=("sgd", "adam")),
        f"{section}.momentum": Field("float", momentum, "SGD momentum.", min=0.0, max=0.999),
        f"{section}.weight_decay": Field("float", 0.0, "L2 weight decay.", min=0.0),
    }


def torch_optimizer(params: Iterable[torch.Tensor], kind: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """The one place an optimizer is made for a model's (or a flat) parameters: torch.optim's SGD
    or Adam. (The batched path steps many clients' stacked tensors at once with the same update
    rules, keeping finished clients' rows as they are: ``vectorized._Optimizer``.)"""
    params = [p for p in params if p.requires_grad]
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


def make_optimizer(params: Iterable[torch.Tensor], opts) -> torch.optim.Optimizer:
    """The optimizer a method's section configures (``optimizer_fields``)."""
    return torch_optimizer(params, opts["optimizer"], opts["lr"], opts["momentum"], opts["weight_decay"])


def batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """One epoch's mini-batches of indices in a seeded random order (the last may be smaller)."""
    order = torch.randperm(n, generator=gen)
    bs = n if batch_size <= 0 else batch_size
    return list(order.split(bs))


def train_epochs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    opt: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    gen: torch.Generator,
    max_steps: int = 0,
) -> int:
    """Plain mini-batch cross-entropy training; the number of steps taken."""
    model.train()
    dev = model_device(model)
    steps = 0
    for _ in range(epochs):
        for idx in batches(len(y), batch_size, gen):
            opt.zero_grad(set_to_none=True)
            xb, yb = x[idx].to(dev), y[idx].to(dev)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            steps += 1
            if max_steps and steps >= max_steps:
                return steps
    return steps


@torch.no_grad()
def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> dict:
    was = model.training
    model.eval()
    dev = model_device(model)
    correct, loss = 0, 0.0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i : i + batch_size].to(dev), y[i : i + batch_size].to(dev)
        logits = model(xb)
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    model.train(was)
    n = max(len(y), 1)
    return {"accuracy": correct / n, "loss": loss / n}
