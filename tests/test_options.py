"""A config section is a typed, read-only options object, built once per config."""

import copy
import pickle

import pytest

from featherfl.schema import build_config


def test_options_read_as_attributes_and_by_name_with_the_schema_types():
    cfg = build_config(overrides=[("algorithm", "baffle"), ("baffle.k", "40")])
    o = cfg.section("baffle")
    assert o.k == o["k"] == 40 and isinstance(o.k, int)  # the --set string was typed once, at build
    assert isinstance(o.sigma, float)
    assert o.field("k").type == "int" and o.field("k").default != 40
    assert dict(o) == {k.split(".", 1)[1]: v for k, v in cfg.as_flat().items() if k.startswith("baffle.")}


def test_a_missing_option_is_an_error_that_lists_the_real_ones():
    o = build_config(overrides=[("algorithm", "fedavg")]).section("fedavg")
    with pytest.raises(AttributeError, match=r"\[fedavg\] has no option 'lrr'; it has: .*\blr\b"):
        o.lrr
    with pytest.raises(KeyError, match="has no option 'lrr'"):
        o["lrr"]
    assert o.get("lrr", 7) == 7 and "lr" in o and "lrr" not in o


def test_options_are_read_only_and_built_once():
    cfg = build_config(overrides=[("algorithm", "fedavg")])
    o = cfg.section("fedavg")
    with pytest.raises(TypeError, match="read-only"):
        o.lr = 1.0
    assert cfg.section("fedavg") is o  # built once per config
    changed = cfg.replace(**{"fedavg.lr": 0.5})
    assert changed.section("fedavg").lr == 0.5 and o.lr != 0.5  # a new config, new options; the old unchanged
    derived = o.with_values(extra=3)
    assert derived.extra == 3 and "extra" not in o


def test_options_survive_pickle_and_deepcopy():  # Ray ships configs to actors
    o = build_config(overrides=[("algorithm", "fd")]).section("fd")
    for back in (pickle.loads(pickle.dumps(o)), copy.deepcopy(o)):
        assert dict(back) == dict(o) and back.field("temperature" if "temperature" in o else next(iter(o))) is not None
