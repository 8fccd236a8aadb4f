"""The aggregation core, value by value: every setting of Aggregator reaches combine, and each
rule returns what its definition says (kills the mutants listed in benchmarks/results/mutation.md)."""

import pytest
import torch

from featherfl.algorithms.aggregate import Aggregator, combine
from featherfl.wire import PayloadError


def _column(values):
    return torch.tensor(values, dtype=torch.float32).view(-1, 1)


def test_median_is_the_middle_value_for_odd_and_the_mean_of_the_two_middle_for_even_counts():
    w = torch.ones(4)
    assert float(combine(_column([1, 2, 10]), w[:3], "median")) == 2.0
    assert float(combine(_column([1, 2, 3, 40]), w, "median")) == 2.5


def test_defaults_of_combine_are_mean_beta_0_1_and_clip_10():
    v = _column(list(range(10)))  # 0..9
    w = torch.ones(10)
    assert float(combine(v, w)) == pytest.approx(4.5)
    assert float(combine(v, w, "trimmed-mean")) == pytest.approx(4.5)  # trims one from each end: mean of 1..8
    big = torch.full((1, 4), 20.0)  # norm 40 from the zero reference, clipped to 10
    assert float(combine(big, torch.ones(1), "norm-clip").norm()) == pytest.approx(10.0)
    skew = _column([0, 0, 0, 0, 0, 0, 0, 0, 100, 100])
    assert float(combine(skew, w, "trimmed-mean")) == pytest.approx(12.5)  # beta 0.1 cuts one value each side: 100 / 8


def test_every_aggregator_setting_reaches_combine():
    v = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # client 0 moved 5 from the reference 0; client 1 did not move
    ref = torch.tensor([1.0, 1.0])
    agg = Aggregator(rule="norm-clip", clip_norm=0.5, weighting="uniform")
    out = agg(v + ref, torch.ones(2), reference=ref)
    # around the reference (not zero), each difference clipped to 0.5, then averaged
    assert torch.allclose(out, ref + torch.tensor([0.3, 0.4]) / 2)
    tm = Aggregator(rule="trimmed-mean", trim_beta=0.2, weighting="uniform")
    column = _column([0, 1, 2, 3, 4, 5, 6, 7, 8, 1000])
    assert float(tm(column, torch.ones(10))) == pytest.approx(4.5)  # beta 0.2 cuts 2 of 10 each side


def test_weights_are_floats_clamped_at_zero_and_capped():
    samples = Aggregator(weighting="samples")
    w = samples.weights(torch.tensor([0, 4, 2**40]))
    assert w.dtype == torch.float64 and w.tolist() == [0.0, 4.0, float(2**40)]  # exact, even past float32
    assert samples.weights(torch.tensor([-3.0, 2.0])).tolist() == [0.0, 2.0]
    capped = Aggregator(weighting="capped", weight_cap=3.0)
    assert capped.weights(torch.tensor([1.0, 2.0, 100.0])).tolist() == [1.0, 2.0, 6.0]


def test_survives_says_what_each_rule_bounds():
    assert Aggregator(rule="mean").survives(0.0) and not Aggregator(rule="mean").survives(0.01)
    assert Aggregator(rule="median").survives(0.3) and not Aggregator(rule="median").survives(0.5)
    assert Aggregator(rule="trimmed-mean", trim_beta=0.2).survives(0.2) and not Aggregator(rule="trimmed-mean", trim_beta=0.2).survives(0.25)


def test_payload_error_message_and_fields():
    e = PayloadError("bad-shape", "field x: (3,) != (4,)")
    assert str(e) == "bad-shape: field x: (3,) != (4,)" and e.reason == "bad-shape" and e.detail == "field x: (3,) != (4,)"
    bare = PayloadError("too-large")
    assert str(bare) == "too-large" and bare.detail == ""


def test_trimmed_mean_past_half_falls_back_to_the_middle():
    """beta >= 0.5 would trim everything: the middle value (odd) or the two middle ones (even) remain."""
    v = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [40.0, 400.0]])
    w = torch.ones(4)
    assert combine(v, w, "trimmed-mean", beta=0.5).tolist() == [2.5, 25.0]
    five = _column([1, 2, 3, 4, 50])
    assert float(combine(_column([1, 2, 3, 10, 50]), torch.ones(5), "trimmed-mean", beta=0.6)) == 3.0  # the median, not mean(2, 3, 10)
    nine = _column([0, 0, 0, 1, 2, 6, 100, 100, 100])
    assert float(combine(nine, torch.ones(9), "trimmed-mean", beta=0.34)) == pytest.approx(3.0)  # k = 3 of 9: mean of 1, 2, 6 (not the median 2)
    assert float(combine(five, torch.ones(5), "trimmed-mean", beta=0.1)) == pytest.approx(12.0)  # k = 0: plain mean


def test_median_works_per_coordinate():
    v = torch.tensor([[40.0, 1.0], [30.0, 2.0], [20.0, 3.0], [10.0, 4.0]])
    assert combine(v, torch.ones(4), "median").tolist() == [25.0, 2.5]
    assert combine(v, torch.ones(4), "trimmed-mean", beta=0.25).tolist() == [25.0, 2.5]


def test_no_vectors_and_unknown_rules_are_errors():
    from featherfl.config import ConfigError

    with pytest.raises(ValueError) as e:
        combine(torch.zeros(0, 3), torch.ones(0))
    assert str(e.value) == "no vectors to combine"
    with pytest.raises(ConfigError) as e:
        combine(torch.ones(2, 3), torch.ones(2), "mode")
    assert str(e.value) == "unknown aggregation rule 'mode'; expected one of mean, median, trimmed-mean, norm-clip"


def test_from_section_reads_every_key_and_defaults_what_unweighted_sections_lack():
    full = {"aggregation": "norm-clip", "trim_beta": 0.3, "clip_norm": 2.5, "weighting": "samples", "weight_cap": 5.0, "max_samples": 99}
    assert Aggregator.from_section(full) == Aggregator("norm-clip", 0.3, 2.5, "samples", 5.0, 99)
    bare = {"aggregation": "median", "trim_beta": 0.1, "clip_norm": 7.0}  # e.g. fd's section: no weighting keys
    assert Aggregator.from_section(bare) == Aggregator("median", 0.1, 7.0, "uniform", 3.0, 0)


def test_aggregation_fields_are_the_safe_defaults():
    """The keys every method's [section] gets (called here, not only at import, so a changed default fails)."""
    from featherfl.algorithms.aggregate import RULES, WEIGHTINGS, aggregation_fields

    f = aggregation_fields("m")
    assert list(f) == ["m.aggregation", "m.trim_beta", "m.clip_norm", "m.weighting", "m.weight_cap", "m.max_samples"]
    got = {k: (v.type, v.default, v.choices, v.min, v.max, v.min_exclusive) for k, v in f.items()}
    assert got == {
        "m.aggregation": ("str", "mean", RULES, None, None, False),
        "m.trim_beta": ("float", 0.2, None, 0.0, 0.49, False),
        "m.clip_norm": ("float", 10.0, None, 0.0, None, True),
        "m.weighting": ("str", "capped", WEIGHTINGS, None, None, False),
        "m.weight_cap": ("float", 3.0, None, 1.0, None, False),
        "m.max_samples": ("int", 0, None, 0, None, False),
    }
    assert RULES == ("mean", "median", "trimmed-mean", "norm-clip") and WEIGHTINGS == ("capped", "samples", "uniform")
    assert list(aggregation_fields("u", weighted=False)) == ["u.aggregation", "u.trim_beta", "u.clip_norm"]
    assert all(v.help for v in f.values())


def test_mean_on_scratch_is_the_same_numbers_and_leaves_a_borrowed_stack_alone():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(37, 101, generator=g)
    w = torch.rand(37, generator=g) * 5
    kept = v.clone()
    plain = combine(v, w)
    assert torch.equal(v, kept)  # not given up: untouched
    assert torch.equal(combine(v.clone(), w, scratch=True), plain)  # bit for bit
