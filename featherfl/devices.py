"""``engine.device``: where models, client training and evaluation run.

``cpu`` (the default: results are exactly featherfl's CPU results), ``auto`` (CUDA when
present, else Apple's MPS, else CPU), ``cuda``, ``cuda:N`` or ``mps``. Payloads, the wire
codec, aggregation and checkpoints stay on the CPU: a model's flat state is copied to the
CPU when it is sent, and received tensors are copied onto the device when loaded. Methods
whose results depend on CPU arithmetic say so with ``Algorithm.runs_on_cpu_only`` (BAFFLE:
a client's local trajectory and the server's replay of it must agree bit for bit) and run on
the CPU whatever the setting (the summary's warnings say so).

Several clients on one GPU: the local engine runs its clients one after another on the
run's device, sharing one model (memory of one client at a time); each Ray worker or
Flower SuperNode process uses the device its own config names, so workers on one GPU
add up their memory.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from featherfl.config import ConfigError

PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve(name: str) -> torch.device:
    """The torch device ``name`` means on this machine; a one-line ConfigError if it is not here."""
    if not PATTERN.match(name):
        raise ConfigError(f"config key 'engine.device': got {name!r}, expected auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"config key 'engine.device': {name} requested, but this machine has no CUDA device (or this torch build has no CUDA); use cpu or auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"config key 'engine.device': {name} requested, but only {torch.cuda.device_count()} CUDA device(s) exist")
    if name == "mps" and not _mps_available():
        raise ConfigError("config key 'engine.device': mps requested, but Apple's MPS backend is not available here; use cpu or auto")
    return torch.device(name)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def model_device(model: nn.Module) -> torch.device:
    """The device a model's parameters live on (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")
