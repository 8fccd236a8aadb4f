"""RDP accountant for the sampled Gaussian mechanism (the ``dp`` extra: Opacus).

A history is a list of ``(noise_multiplier, sample_rate, steps)`` entries; RDP
composes additively over them, and the tightest epsilon over the RDP orders is
reported for the given delta (Mironov 2017, Prop. 3; Abadi et al. 2016's
moments accountant is the same bound).
"""

from __future__ import annotations

import math

from featherfl.config import ConfigError

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256]


def _rdp():
    try:
        from opacus.accountants.analysis import rdp
    except ImportError:
        raise ConfigError("differential privacy needs the dp extra: pip install 'featherfl[dp]'") from None
    return rdp


def epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Epsilon spent after the mechanisms in ``history`` (0 steps -> 0; no noise -> inf)."""
    steps = [(float(z), float(q), int(s)) for z, q, s in history if s > 0 and q > 0]
    if not steps:
        return 0.0
    if any(z <= 0 for z, _, _ in steps):
        return math.inf
    rdp = _rdp()
    total = None
    for z, q, s in steps:
        r = rdp.compute_rdp(q=min(q, 1.0), noise_multiplier=z, steps=s, orders=ORDERS)
        total = r if total is None else total + r
    eps, _ = rdp.get_privacy_spent(orders=ORDERS, rdp=total, delta=delta)
    return float(eps)


def noise_for_epsilon(target: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier (to 0.1 %) whose epsilon after ``steps`` is at most ``target``."""
    if steps <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while epsilon([(hi, sample_rate, steps)], delta) > target:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            raise ConfigError(f"no noise multiplier reaches epsilon {target} with delta {delta}")
    while hi - lo > 1e-3 * hi:
        mid = (lo + hi) / 2
        if mid > 0 and epsilon([(mid, sample_rate, steps)], delta) <= target:
            hi = mid
        else:
            lo = mid
    return hi
