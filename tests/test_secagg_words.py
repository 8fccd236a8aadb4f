"""Secure aggregation's word size: each method declares the range and precision of what it sums
(``Summation.value_range``), and the smallest ring that holds the round's sum is the default."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("flwr")

from featherfl.algorithms.registry import get as get_algorithm  # noqa: E402
from featherfl.config import ConfigError  # noqa: E402
from featherfl.experiment import Experiment, prepare  # noqa: E402
from featherfl.schema import build_config  # noqa: E402
from featherfl.secagg import adapt, words  # noqa: E402
from featherfl.secagg.wrapper import counts_back, with_counts  # noqa: E402

SMALL = [("rounds", 2), ("clients", 5), ("data.max_train", 400), ("data.max_test", 300), ("engine.threads", 1), ("partition.name", "iid"), ("secagg.protocol", "secagg+")]


def _words(overrides):
    cfg = build_config(overrides=SMALL + overrides)
    method = get_algorithm(cfg["algorithm"])
    cfg, _ = adapt(cfg, method)
    return words(cfg, method.summation, method.name)


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ([("algorithm", "fedavg")], (32, 16)),  # capped -> uniform: |update| <= 16 at 2^-16
        ([("algorithm", "fedavg"), ("clients", 3000)], (64, 16)),  # 3,000 x 16 > 2^15
        ([("algorithm", "fedavg"), ("fedavg.weighting", "samples")], (64, 32)),  # no bound on a claimed count
        ([("algorithm", "fedavg"), ("fedavg.weighting", "samples"), ("fedavg.max_samples", 100)], (32, 16)),
        ([("algorithm", "baffle")], (32, 22)),  # sigma 1e-4: step sigma / 256 = 2^-21.3
        ([("algorithm", "fd")], (32, 16)),  # softmax outputs in [0, 1]
        ([("algorithm", "fd"), ("clients", 40_000)], (64, 16)),
        ([("algorithm", "fd"), ("fd.logit_noise", 1.0)], (64, 32)),  # Gaussian noise: no bound
        ([("algorithm", "fd"), ("secagg.ring_bits", 64)], (64, 16)),
        ([("algorithm", "fd"), ("secagg.fraction_bits", 20)], (32, 20)),
    ],
)
def test_the_smallest_ring_that_holds_the_declared_range_is_the_default(overrides, expected):
    assert _words(overrides) == expected


@pytest.mark.parametrize(
    "overrides,key,message",
    [
        ([("algorithm", "fedavg"), ("fedavg.weighting", "samples"), ("secagg.ring_bits", 32)], "secagg.ring_bits", "declares no bound"),
        ([("algorithm", "fd"), ("secagg.ring_bits", 16)], "secagg.ring_bits", "16-bit words cannot hold"),
        ([("algorithm", "fedavg"), ("clients", 3000), ("secagg.ring_bits", 32)], "secagg.ring_bits", "32-bit words cannot hold"),
        ([("algorithm", "fd"), ("clients", 200), ("secagg.ring_bits", 32), ("secagg.fraction_bits", 24)], "secagg.fraction_bits", "24 fraction bits"),
    ],
)
def test_a_chosen_ring_that_cannot_hold_the_declared_range_is_refused_in_one_line(overrides, key, message):
    with pytest.raises(ConfigError) as e:
        prepare(build_config(overrides=SMALL + overrides))
    text = str(e.value)
    assert f"config key '{key}'" in text and message in text and "\n" not in text


def test_counts_travel_as_whole_numbers_of_one_step_each():
    f = 16
    x = np.array([0.25, -0.5, 3.0, 1.0])
    got = with_counts(x, 2, f)
    assert got[0] == 0.25 and got[2] == 3 * 2.0**-f and got[3] == 2.0**-f
    assert np.array_equal(counts_back(got * 7, 2, f)[2:], [21.0, 7.0])  # the sum of 7 such uploads


def test_a_default_run_masks_32_bit_words_and_sums_counts_exactly(tmp_path):
    """FD at the defaults: 32-bit words (half the 64-bit masked upload), the label holders summed
    exactly (the count entries), the same teachers as a forced 64-bit run within quantisation."""
    rows = {}
    for name, extra in (("auto", []), ("w64", [("secagg.ring_bits", 64)])):
        cfg = build_config(overrides=SMALL + [("algorithm", "fd"), ("fd.local_steps", 10)] + extra)
        p = prepare(cfg)
        summary = Experiment(p, tmp_path / name, progress=False).run()
        rows[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        rows[name + "-alg"] = p.algorithm
        rows[name + "-summary"] = summary
    assert rows["auto-summary"]["secagg_words"] == "32-bit, 16 fraction bits"
    assert rows["w64-summary"]["secagg_words"] == "64-bit, 16 fraction bits"
    a, b = rows["auto-alg"].adapter, rows["w64-alg"].adapter
    assert a.holders.equal(b.holders) and int(a.holders.sum()) > 0
    assert float((a.totals - b.totals).abs().max()) <= 5 * 2.0**-17
    dim = a.dim(1, 0) + 1
    for r32, r64 in zip(rows["auto"], rows["w64"]):
        # the masked uploads differ by exactly 4 bytes a word; every other protocol byte is the same
        assert r64["bytes_by_category"]["up_secagg"] - r32["bytes_by_category"]["up_secagg"] == 5 * 4 * dim
        assert r32["secagg_clipped_values"] == 0
