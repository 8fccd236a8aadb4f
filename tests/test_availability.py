"""Cross-device sampling: a fixed cohort size, a seeded diurnal availability trace, and the
one-line refusals around them."""

import json

import numpy as np
import pytest

from featherfl import cli
from featherfl.config import ConfigError
from featherfl.engines.base import sample_clients
from featherfl.engines.sampling import CohortSampler, available_clients, client_phases, online_probability
from featherfl.schema import build_config

FAST = ["--dataset", "digits", "--rounds", "3", "--quiet", "--set", "log.plots=false", "--set", "engine.threads=1", "--set", "fedavg.max_steps=2", "--set", "partition.name=iid"]


def _cfg(**kw):
    return build_config(overrides=[(k.replace("__", "."), v) for k, v in kw.items()])


def test_always_draws_exactly_what_it_drew_before():
    cfg = _cfg(clients=50, engine__fraction=0.3, seed=7)
    s = CohortSampler(cfg, 50)
    for r in range(1, 6):
        assert s(r) == (sample_clients(7, r, 50, 0.3), 50)


def test_cohort_key_sets_the_round_size():
    s = CohortSampler(_cfg(clients=40, engine__cohort=6), 40)
    assert all(len(s(r)[0]) == 6 for r in range(1, 5))


def test_cohort_larger_than_population_is_one_line():
    with pytest.raises(ConfigError, match=r"engine.cohort.*more than the population \(clients = 10\)") as e:
        _cfg(clients=10, engine__cohort=11)
    assert "\n" not in str(e.value)


def test_diurnal_trace_is_seeded_and_follows_the_day():
    phases = client_phases(3, 2000)
    online = [len(available_clients(3, r, 2000, 0.1, 24.0, phases)) for r in range(1, 25)]
    assert online == [len(available_clients(3, r, 2000, 0.1, 24.0)) for r in range(1, 25)]  # same seed, same trace
    assert max(online) > 3 * min(online)  # day and night differ
    p = online_probability(0, np.array([0.0, 0.5]), 0.1, 24.0)
    assert p[0] == pytest.approx(1.0) and p[1] == pytest.approx(0.1)  # noon and midnight of the home zone
    s = CohortSampler(_cfg(clients=2000, engine__cohort=50, engine__availability="diurnal", seed=3), 2000)
    for r in (1, 12):
        sampled, n_online = s(r)
        assert n_online == online[r - 1] and len(sampled) == min(50, n_online)
        assert set(sampled) <= set(available_clients(3, r, 2000, 0.1, 24.0).tolist())


def test_a_round_with_nobody_online_fails_the_run_not_exit_0(tmp_path, capsys):
    # seed 1, 4 clients, a 4-round day, nobody online at night: round 2 finds no client
    args = ["run", *FAST, "--clients", "4", "--seed", "1", "--set", "engine.availability=diurnal", "--set", "engine.availability_min=0", "--set", "engine.availability_period=4"]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 1
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["status"] == "failed" and "no client online" in summary["reason"]
    assert cli.main([*args, "--out", str(tmp_path / "b"), "--set", "engine.max_failed_rounds=1"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients_online"] for r in rows] == [3, 0, 2] and [r["aggregated"] for r in rows] == [True, False, True]
    assert rows[1]["clients_sampled"] == 0 and rows[1]["bytes_up"] == 0
