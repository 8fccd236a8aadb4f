"""Every random choice in featherfl takes its seed from here: a stable hash of the run's
seed and the choice's coordinates (round, client, step, purpose), so the same config gives
the same draws on every machine, engine and process, and no choice depends on another's
consumption of a shared generator."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int | str) -> int:
    """A stable 63-bit seed from any tuple (e.g. run seed, round, client, step)."""
    h = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & (2**63 - 1)


def generator(*parts: int | str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))
