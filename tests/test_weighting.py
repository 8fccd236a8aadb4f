"""A client cannot buy influence with a claimed sample count (weighting policies, inflate-count attack)."""

import json

import pytest
import torch

from featherfl import cli
from featherfl.algorithms.aggregate import Aggregator, combine
from featherfl.algorithms.fedavg import WeightsDown, WeightsUp
from featherfl.attacks import Attack
from featherfl.schema import build_config
from featherfl.experiment import robustness_warnings

CLAIMS = torch.tensor([100.0, 120, 140, 1e9, 90, 110, 130, 150, 95, 105])


def _share_of_liar(agg: Aggregator) -> float:
    w = agg.weights(CLAIMS)
    return float(w[3] / w.sum())


def test_policies_bound_the_liar():
    assert _share_of_liar(Aggregator(weighting="samples")) > 0.999
    assert _share_of_liar(Aggregator(weighting="uniform")) == pytest.approx(0.1)
    capped = Aggregator(weighting="capped", weight_cap=3.0)
    median = float(CLAIMS.median())
    assert float(capped.weights(CLAIMS)[3]) == pytest.approx(3.0 * median)
    assert _share_of_liar(capped) < 0.3
    fixed = Aggregator(weighting="samples", max_samples=200)
    assert float(fixed.weights(CLAIMS)[3]) == 200.0


def test_capped_leaves_honest_claims_alone():
    honest = torch.tensor([55.0, 72, 73, 114, 143, 150, 154, 193, 240, 244])  # a default digits split
    assert torch.equal(Aggregator(weighting="capped").weights(honest), honest.double())


def test_default_is_the_safe_policy():
    cfg = build_config()
    for sec in ("fedavg", "fedsgd", "baffle", "fedpeft"):
        assert cfg[f"{sec}.weighting"] == "capped", sec


def test_median_and_trimmed_mean_ignore_weights():
    v = torch.tensor([[0.0], [1.0], [2.0], [100.0], [3.0]])
    for rule in ("median", "trimmed-mean"):
        a = combine(v, torch.ones(5), rule, beta=0.2)
        b = combine(v, torch.tensor([1.0, 1, 1, 1e9, 1]), rule, beta=0.2)
        assert torch.equal(a, b), rule


def test_inflate_count_keeps_the_update_and_lies_about_the_count():
    down, up = WeightsDown(torch.zeros(3)), WeightsUp(torch.tensor([1.0, 2.0, 3.0]), 7)
    out = Attack("inflate-count", claimed_samples=10**9).apply(1, 0, down, up)
    assert torch.equal(out.weights, up.weights) and out.num_samples == 10**9


def test_warnings_say_what_the_configured_rule_cannot_survive():
    bad = build_config(overrides=[("attack.fraction", 0.3), ("attack.kind", "sign-flip"), ("fedavg.aggregation", "trimmed-mean")])
    assert any("not robust to 30%" in w for w in robustness_warnings(bad))
    ok = build_config(overrides=[("attack.fraction", 0.2), ("attack.kind", "sign-flip"), ("fedavg.aggregation", "trimmed-mean")])
    assert robustness_warnings(ok) == []
    liar = build_config(overrides=[("attack.fraction", 0.1), ("attack.kind", "inflate-count"), ("fedavg.weighting", "samples")])
    assert any("weighting=samples" in w for w in robustness_warnings(liar))


def _accuracy(tmp_path, weighting):
    out = tmp_path / weighting
    argv = ["run", "--rounds", "20", "--clients", "10", "--out", str(out), "--quiet", "--set", "engine.threads=1", "--set", "fedavg.local_epochs=1",
            "--set", "attack.fraction=0.1", "--set", "attack.kind=inflate-count", "--set", f"fedavg.weighting={weighting}"]
    assert cli.main(argv) == 0
    return json.loads((out / "summary.json").read_text())["final_accuracy"]


def test_one_liar_in_ten_takes_over_samples_weighting_but_not_the_default(tmp_path):
    """FedAvg on a Dirichlet split: trusting the claim hands the model to one client's skewed data."""
    trusting, capped = (_accuracy(tmp_path, w) for w in ("samples", "capped"))
    assert capped > 0.85  # measured 0.955 (clean: 0.958) at the default 2 local epochs
    assert capped > trusting + 0.1  # measured 0.72 at the default 2 local epochs
