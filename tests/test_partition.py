import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featherfl.config import ConfigError
from featherfl.data import partition as P


def _labels(n, k=10, seed=0):
    return np.random.default_rng(seed).integers(0, k, size=n)


def _assert_exact_cover(parts, n):
    allidx = np.concatenate(parts)
    assert len(allidx) == n
    assert len(np.unique(allidx)) == n


@settings(max_examples=25, deadline=None)
@given(n=st.integers(200, 800), clients=st.integers(2, 12), seed=st.integers(0, 10_000))
def test_every_sample_assigned_exactly_once(n, clients, seed):
    y = _labels(n, seed=seed)
    _assert_exact_cover(P.iid(y, clients, seed), n)
    _assert_exact_cover(P.dirichlet(y, clients, 0.5, seed, min_samples=2), n)
    _assert_exact_cover(P.shards(y, clients, 2, seed), n)
    _assert_exact_cover(P.quantity_skew(y, clients, 0.5, seed, min_samples=2), n)


def _mean_label_entropy(parts, y, k=10):
    ents = []
    for p in parts:
        h = np.bincount(y[p], minlength=k) / len(p)
        h = h[h > 0]
        ents.append(-(h * np.log(h)).sum())
    return float(np.mean(ents))


def test_dirichlet_alpha_controls_skew():
    y = _labels(5000)
    skewed = _mean_label_entropy(P.dirichlet(y, 10, 0.05, 1, min_samples=5), y)
    uniform = _mean_label_entropy(P.dirichlet(y, 10, 1000.0, 1, min_samples=5), y)
    assert uniform > np.log(10) - 0.05  # near-uniform label mix
    assert skewed < uniform - 0.8


def test_dirichlet_is_seeded():
    y = _labels(1000)
    a, b = P.dirichlet(y, 5, 0.3, 7), P.dirichlet(y, 5, 0.3, 7)
    assert all((x == z).all() for x, z in zip(a, b))
    c = P.dirichlet(y, 5, 0.3, 8)
    assert not all(len(x) == len(z) and (x == z).all() for x, z in zip(a, c))


def test_shards_give_k_classes_per_client():
    y = np.repeat(np.arange(10), 100)
    parts = P.shards(y, 10, 2, 0)
    assert all(len(np.unique(y[p])) <= 2 for p in parts)


def test_label_deficient_counts_exact():
    y = np.repeat(np.arange(10), 200)
    parts, targets = P.label_deficient(y, 4, seed=3, samples_per_client=400, target_labels=3, target_keep=5)
    for p, tgt in zip(parts, targets):
        counts = np.bincount(y[p], minlength=10)
        assert len(tgt) == 3
        for t in tgt:
            assert counts[t] == 5
        assert all(counts[c] > 5 for c in range(10) if c not in tgt)
    # disjoint across clients
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx)


def test_label_deficient_overlap_lets_devices_exceed_the_pool():
    """The FD paper's M=10 x 2,000 samples from an 8,000 pool: distinct within a device, shared across."""
    y = np.repeat(np.arange(10), 800)
    with pytest.raises(ConfigError, match="partition.overlap"):
        P.label_deficient(y, 10, seed=0, samples_per_client=2000)
    parts, targets = P.label_deficient(y, 10, seed=0, samples_per_client=2000, target_labels=3, target_keep=5, overlap=True)
    for p, tgt in zip(parts, targets):
        assert len(np.unique(p)) == len(p)  # no sample twice on one device
        counts = np.bincount(y[p], minlength=10)
        assert [int(counts[t]) for t in tgt] == [5, 5, 5]
        assert sum(counts[c] for c in range(10) if c not in tgt) > 1300  # ~7/10 of 2,000
    assert len(np.unique(np.concatenate(parts))) < sum(len(p) for p in parts)  # devices share samples
    again, _ = P.label_deficient(y, 10, seed=0, samples_per_client=2000, target_labels=3, target_keep=5, overlap=True)
    assert all((a == b).all() for a, b in zip(parts, again))


def test_too_many_clients_is_config_error():
    with pytest.raises(ConfigError):
        P.dirichlet(_labels(50), 20, 0.5, 0, min_samples=10)


def test_dirichlet_many_clients_small_alpha_meets_min_samples():
    """At 10^4 clients and alpha 0.1 almost no whole draw gives every client its minimum;
    the split must still succeed (repairing the last draw), cover every sample exactly once,
    and leave every client at least ``min_samples``."""
    y = _labels(10_000 * 12, seed=1)
    parts = P.dirichlet(y, 10_000, 0.1, seed=0, min_samples=10)
    assert len(parts) == 10_000
    assert min(len(p) for p in parts) >= 10
    _assert_exact_cover(parts, len(y))


def test_dirichlet_repair_keeps_label_skew():
    """The repair moves only the shortfall: most samples stay where Dir(alpha) put them, so
    clients stay far more label-skewed than an IID split."""
    y = _labels(4000, seed=2)
    parts = P.dirichlet(y, 200, 0.1, seed=0, min_samples=15, max_tries=1)
    assert min(len(p) for p in parts) >= 15
    _assert_exact_cover(parts, len(y))
    assert _mean_label_entropy(parts, y) < 0.8 * _mean_label_entropy(P.iid(y, 200, 0), y)


def test_dirichlet_impossible_minimum_fails_up_front():
    with pytest.raises(ConfigError, match="exceeds"):
        P.dirichlet(_labels(1000), 200, 0.5, seed=0, min_samples=6)


def test_dirichlet_same_seed_same_split():
    y = _labels(3000, seed=3)
    a = P.dirichlet(y, 300, 0.2, seed=5, min_samples=5)
    b = P.dirichlet(y, 300, 0.2, seed=5, min_samples=5)
    assert all(np.array_equal(x, z) for x, z in zip(a, b))


def test_natural_matches_one_scan_per_client_id():
    """The sort-based build gives, client by client, exactly the ascending indices a scan per id gives."""
    from featherfl.data.partition import natural

    rng = np.random.default_rng(3)
    groups = rng.integers(100, 400, size=5_000)
    ids = np.unique(groups)
    got = natural(groups, len(ids) - 5)
    want = [np.flatnonzero(groups == g) for g in ids[: len(ids) - 5]]
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    names = np.array(["w2", "w1", "w2", "w3", "w1"])
    assert [p.tolist() for p in natural(names, 2)] == [[1, 4], [0, 2]]
