"""Which clients a round asks: the cohort, drawn from the clients available that round.

Cross-device populations are large and mostly offline: a phone trains when it is idle, charging
and on Wi-Fi, which follows the local time of day. ``engine.availability = "diurnal"`` models
that with a seeded trace: client ``c`` has a home phase ``phi_c`` (its time zone, as a share of
a day, drawn around a common phase so that most clients share a night) and in round ``r`` is
online with probability

    p_c(r) = low + (1 - low) * (1 + cos(2 pi (r / period - phi_c))) / 2

(``low`` = ``engine.availability_min``, ``period`` = ``engine.availability_period`` rounds per
day). The cohort is then drawn uniformly from the clients online in that round; ``engine.dropout``
and ``engine.deadline`` still apply to it afterwards. Every draw comes from the run's seed, so
the same config gives the same cohorts. With ``always`` (the default) the cohort is drawn from
the whole population exactly as before.
"""

from __future__ import annotations

import math

import numpy as np

from featherfl.config import cohort_size
from featherfl.seeding import derive_seed

#: Spread (standard deviation, in days) of the clients' home phases around the common one.
PHASE_SPREAD = 0.15


def client_phases(seed: int, population: int) -> np.ndarray:
    rng = np.random.default_rng(derive_seed(seed, "availability-phase"))
    return rng.normal(0.0, PHASE_SPREAD, size=population) % 1.0


def online_probability(rnd: int, phases: np.ndarray, low: float, period: float) -> np.ndarray:
    return low + (1.0 - low) * (1.0 + np.cos(2.0 * math.pi * (rnd / period - phases))) / 2.0


def available_clients(seed: int, rnd: int, population: int, low: float, period: float, phases: np.ndarray | None = None) -> np.ndarray:
    """The clients online in round ``rnd`` under the diurnal trace (sorted ids)."""
    phases = client_phases(seed, population) if phases is None else phases
    draws = np.random.default_rng(derive_seed(seed, "availability", rnd)).random(population)
    return np.flatnonzero(draws < online_probability(rnd, phases, low, period))


def sample_from(seed: int, rnd: int, candidates: np.ndarray, k: int) -> list[int]:
    """``k`` of ``candidates`` (all of them when fewer are online), uniformly, from the seed."""
    if len(candidates) <= k:
        return [int(c) for c in candidates]
    rng = np.random.default_rng(derive_seed(seed, "sample", rnd))
    return sorted(int(c) for c in candidates[rng.choice(len(candidates), size=k, replace=False)])


class CohortSampler:
    """The round's cohort and how many clients were offline, for one run's config."""

    def __init__(self, cfg, population: int):
        self.cfg = cfg
        self.population = population
        self.k = cohort_size(cfg, population)
        self.trace = cfg.get("engine.availability", "always") or "always"
        self._phases = client_phases(cfg["seed"], population) if self.trace == "diurnal" else None

    def __call__(self, rnd: int) -> tuple[list[int], int]:
        """(sampled client ids, clients online this round)."""
        seed = self.cfg["seed"]
        if self.trace == "always":
            rng = np.random.default_rng(derive_seed(seed, "sample", rnd))
            return sorted(int(c) for c in rng.choice(self.population, size=self.k, replace=False)), self.population
        online = available_clients(seed, rnd, self.population, self.cfg["engine.availability_min"], self.cfg["engine.availability_period"], self._phases)
        return sample_from(seed, rnd, online, self.k), len(online)
