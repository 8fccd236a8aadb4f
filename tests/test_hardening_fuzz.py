"""Hostile payloads: every payload kind of every registered algorithm is fuzzed.

The decoder must reject every malformed input with a reason and never raise
anything else; what it accepts must match the spec. The 100,000-inputs-per-kind
run is ``benchmarks/fuzz_decoder.py``; here a moderate count keeps the suite fast.
"""

import ast
import dataclasses
from collections import Counter
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featherfl import algorithms, wire
from support import fuzzing

ALGORITHMS = algorithms.names()


@lru_cache(maxsize=None)
def entries(name):
    return tuple(fuzzing.catalog([name]))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_catalog_covers_both_directions_and_examples_decode(name):
    es = entries(name)
    assert {e.direction for e in es} == {"down", "up"}, [e.name for e in es]
    for e in es:
        out = wire.decode(wire.encode(e.example, fuzzing.ROUND, fuzzing.RUN), e.specs, round=fuzzing.ROUND, run=fuzzing.RUN)
        fuzzing.conforms(out, e.specs)


@pytest.mark.parametrize("name", ALGORITHMS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutation=st.sampled_from(sorted(fuzzing.MUTATIONS)), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_mutants_never_crash_the_decoder(name, mutation, seed):
    for e in entries(name):
        fuzzing.check(e, mutation, seed)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=600), kind=st.sampled_from(ALGORITHMS))
def test_random_bytes_rejected_with_a_reason(data, kind):
    specs = {}
    for e in entries(kind):
        specs.update(e.specs)
    try:
        out = wire.decode(data, specs, round=fuzzing.ROUND, run=fuzzing.RUN)
    except wire.PayloadError as err:
        assert err.reason
        return
    fuzzing.conforms(out, specs)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_mutation_class_rejected_for_the_right_reason(name):
    """A deterministic sweep so each kind of damage is seen, not only what hypothesis happens to draw."""
    for e in entries(name):
        seen = Counter()
        for mutation in fuzzing.MUTATIONS:
            for seed in range(40):
                seen[fuzzing.check(e, mutation, seed)] += 1
        must = {"truncated", "bad-magic", "bad-version", "wrong-round", "wrong-run", "unexpected-kind", "bad-meta", "bad-fields", "bad-tensors", "wrong-dtype", "wrong-shape", "oversized"}
        if any(ts.dtype.startswith("float") and ts.finite for ts in e.spec.tensors.values()):
            must.add("non-finite")
        assert must <= set(seen), (e.name, sorted(must - set(seen)))


def _uplink(name, kind):
    return next(e for e in entries(name) if e.kind == kind)


def _reshaped(e, field, shape):
    ts = e.spec.tensors[field]
    t = fuzzing.synth_tensor(dataclasses.replace(ts, shape=shape), torch.Generator().manual_seed(0))
    return wire.encode(dataclasses.replace(e.example, **{field: t}), fuzzing.ROUND, fuzzing.RUN)


@pytest.mark.skipif("baffle" not in ALGORITHMS, reason="BAFFLE not registered")
def test_baffle_wrong_k_rejected():
    e = _uplink("baffle", "baffle.up")
    (field,) = [n for n, ts in e.spec.tensors.items() if ts.dtype == "float32"]  # the S x K loss differences
    s, k = e.spec.tensors[field].shape
    for shape in ((s, k - 1), (s, k + 1), (s + 1, k), (k,), (s, k, 1)):
        with pytest.raises(wire.PayloadError) as err:
            wire.decode(_reshaped(e, field, shape), e.specs, round=fuzzing.ROUND, run=fuzzing.RUN)
        assert err.value.reason == "wrong-shape", shape


@pytest.mark.skipif("fd" not in ALGORITHMS, reason="FD not registered")
def test_fd_wrong_label_count_rejected():
    e = _uplink("fd", "fd.logits")
    (rows,) = [n for n, ts in e.spec.tensors.items() if len(ts.shape) == 2]  # L x L per-label outputs
    (counts,) = [n for n, ts in e.spec.tensors.items() if len(ts.shape) == 1]  # L per-label counts
    L = e.spec.tensors[rows].shape[0]
    for field, shape in ((rows, (L + 1, L + 1)), (rows, (L - 1, L)), (rows, (L, L + 1)), (counts, (L + 1,)), (counts, (L - 1,))):
        with pytest.raises(wire.PayloadError) as err:
            wire.decode(_reshaped(e, field, shape), e.specs, round=fuzzing.ROUND, run=fuzzing.RUN)
        assert err.value.reason == "wrong-shape", (field, shape)


def test_no_module_unpickles_or_evaluates_bytes():
    """Static audit: nothing in the package may turn received bytes into objects by pickle or eval."""
    root = Path(__file__).resolve().parents[1] / "featherfl"
    banned_calls = {"loads", "load", "Unpickler"}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                assert not any(m.split(".")[0] in ("pickle", "cPickle", "dill", "marshal", "shelve", "joblib", "cloudpickle") for m in mods), f"{path}: imports {mods}"
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
                if isinstance(f, ast.Name) and name in ("eval", "exec", "__import__"):
                    pytest.fail(f"{path}:{node.lineno} calls {name}")
                if owner == "torch" and name == "load":
                    kw = {k.arg: k.value for k in node.keywords}
                    ok = "weights_only" in kw and isinstance(kw["weights_only"], ast.Constant) and kw["weights_only"].value is True
                    assert ok, f"{path}:{node.lineno}: torch.load without weights_only=True"
                assert not (owner in ("pickle", "marshal") and name in banned_calls), f"{path}:{node.lineno}"
