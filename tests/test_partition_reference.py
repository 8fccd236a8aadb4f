"""The partitioners give, seed for seed, the lists of a plain reference written here one client
(or one class, one try) at a time: the faster code changes how the lists are built, never
which lists an experiment gets. Bad inputs stay one-line errors."""

import numpy as np
import pytest

from featherfl.config import ConfigError
from featherfl.data import partition as P

SEEDS = (0, 1, 7, 42)


# --- the references ------------------------------------------------------------------------------


def ref_iid(labels, n_clients, seed):
    perm = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(c) for c in np.array_split(perm, n_clients)]


def ref_top_up(owner, counts, min_samples, rng):
    """Sort every sample by (client, uniform key), let each client keep its first min_samples,
    draw the movers from the rest."""
    need = np.clip(min_samples - counts, 0, None)
    order = np.lexsort((rng.random(len(owner)), owner))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(len(owner)) - starts[owner[order]]
    pool = order[rank >= min_samples]
    moved = rng.choice(pool, size=int(need.sum()), replace=False)
    owner[moved] = np.repeat(np.arange(len(counts)), need)


def ref_dirichlet(labels, n_clients, alpha, seed, min_samples=10, max_tries=20):
    rng = np.random.default_rng(seed)
    owner = np.empty(len(labels), dtype=np.int64)
    for _ in range(max(1, max_tries)):
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            rng.shuffle(idx)
            p = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            owner[idx] = np.repeat(np.arange(n_clients), np.diff(np.concatenate(([0], cuts, [len(idx)]))))
        counts = np.bincount(owner, minlength=n_clients)
        if counts.min() >= min_samples:
            break
    else:
        ref_top_up(owner, counts, min_samples, rng)
    order = np.argsort(owner, kind="stable")
    return np.split(order, np.cumsum(np.bincount(owner, minlength=n_clients))[:-1])


def ref_shards(labels, n_clients, k, seed):
    rng = np.random.default_rng(seed)
    pieces = np.array_split(np.argsort(labels, kind="stable"), n_clients * k)
    assign = rng.permutation(n_clients * k)
    return [np.sort(np.concatenate([pieces[s] for s in assign[i * k : (i + 1) * k]])) for i in range(n_clients)]


def ref_sized(labels, n_clients, seed, min_samples, weights):
    """quantity-skew and power-law: min_samples each plus a share of the rest by weight, the
    largest weight taking the remainder, cut from one permutation."""
    n = len(labels)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    w = weights(rng)
    sizes = min_samples + np.floor(w / w.sum() * (n - min_samples * n_clients)).astype(np.int64)
    sizes[np.argmax(w)] += n - sizes.sum()
    return [np.sort(c) for c in np.split(perm, np.cumsum(sizes)[:-1])]


def ref_label_deficient(labels, n_clients, seed, s, t, r, overlap=False):
    n = len(labels)
    classes = np.unique(labels)
    s = s or n // n_clients
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    parts, targets = [], []
    for i in range(n_clients):
        drawn = rng.choice(n, size=s, replace=False) if overlap else perm[i * s : (i + 1) * s]
        tgt = np.sort(rng.choice(classes, size=t, replace=False))
        seen = {int(c): 0 for c in tgt}
        keep = []
        for j in drawn:
            lab = int(labels[j])
            if lab in seen:
                seen[lab] += 1
                if seen[lab] > r:
                    continue
            keep.append(j)
        parts.append(np.sort(np.array(keep, dtype=np.int64)))
        targets.append([int(c) for c in tgt])
    return parts, targets


def assert_same_lists(got, want):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert np.array_equal(a, b), f"client {i}"


def _labels(n, k=10, seed=0):
    return np.random.default_rng(seed).integers(0, k, size=n)


# --- same lists ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n,clients", [(600, 7), (2_000, 64), (997, 13)])
def test_iid_shards_sized_same_lists(seed, n, clients):
    y = _labels(n, seed=seed + 1)
    assert_same_lists(P.iid(y, clients, seed), ref_iid(y, clients, seed))
    assert_same_lists(P.shards(y, clients, 2, seed), ref_shards(y, clients, 2, seed))
    assert_same_lists(P.shards(y, clients, 3, seed), ref_shards(y, clients, 3, seed))
    m = min(10, n // clients)
    assert_same_lists(P.quantity_skew(y, clients, 0.5, seed, m), ref_sized(y, clients, seed, m, lambda g: g.dirichlet(np.full(clients, 0.5))))
    assert_same_lists(P.power_law(y, clients, 1.5, seed, m), ref_sized(y, clients, seed, m, lambda g: g.pareto(1.5, size=clients) + 1.0))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n,clients,alpha,min_samples,tries", [(600, 7, 0.5, 10, 20), (3_000, 40, 0.1, 20, 20), (2_000, 200, 0.1, 8, 3), (1_000, 5, 100.0, 5, 20)])
def test_dirichlet_same_lists(seed, n, clients, alpha, min_samples, tries):
    """Including draws that never meet the minimum and are repaired (the last two rows)."""
    y = _labels(n, seed=seed + 2)
    got = P.dirichlet(y, clients, alpha, seed, min_samples, tries)
    assert_same_lists(got, ref_dirichlet(y, clients, alpha, seed, min_samples, tries))
    assert min(len(p) for p in got) >= min_samples


def test_dirichlet_below_ten_thousand_clients_makes_every_try():
    """9,000 clients x 12 rows at alpha 0.1: every draw leaves hundreds short, all 20 are made
    and the last repaired, as the plain loop does."""
    y = _labels(9_000 * 12, seed=3)
    assert_same_lists(P.dirichlet(y, 9_000, 0.1, 5, 10), ref_dirichlet(y, 9_000, 0.1, 5, 10))


def test_dirichlet_large_population_repairs_the_first_hopeless_draw():
    """From 10,000 clients a draw leaving 32 or more short ends the tries: the split is that draw
    repaired, what the plain loop gives with one try."""
    y = _labels(10_000 * 12, seed=4)
    got = P.dirichlet(y, 10_000, 0.1, 6, 10)
    assert_same_lists(got, ref_dirichlet(y, 10_000, 0.1, 6, 10, max_tries=1))
    assert min(len(p) for p in got) >= 10


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n,clients,s,t,r,overlap", [(2_000, 4, 400, 3, 5, False), (3_000, 50, 0, 3, 5, False), (3_000, 30, 60, 10, 2, False), (800, 10, 200, 3, 5, True)])
def test_label_deficient_same_lists(seed, n, clients, s, t, r, overlap):
    y = _labels(n, seed=seed + 3)
    parts, targets = P.label_deficient(y, clients, seed, s, t, r, overlap)
    want_parts, want_targets = ref_label_deficient(y, clients, seed, s, t, r, overlap)
    assert targets == want_targets
    assert_same_lists(parts, want_parts)


def test_label_deficient_targets_when_numpy_would_draw_again(monkeypatch):
    """numpy's bounded draw rarely takes a second word; the client where that happens is drawn by
    numpy itself and the rest stay the same. With 10,000 labels and 100 targets seed 3 meets
    such a draw (the words are then read again, from after the last good client)."""
    reads = []
    real = P._read_words
    monkeypatch.setattr(P, "_read_words", lambda bg, count: reads.append(count) or real(bg, count))
    y = np.arange(20_000) % 10_000
    parts, targets = P.label_deficient(y, 2_000, 3, 10, 100, 1)
    assert len(reads) > 1  # the odd client was met
    want_parts, want_targets = ref_label_deficient(y, 2_000, 3, 10, 100, 1)
    assert targets == want_targets
    assert_same_lists(parts, want_parts)


def test_label_deficient_all_labels_as_targets():
    """t = every label: Floyd's first bound is 0, a draw that takes no word."""
    y = _labels(500, k=6, seed=9)
    for seed in SEEDS:
        assert P.label_deficient(y, 5, seed, 0, 6, 2)[1] == ref_label_deficient(y, 5, seed, 0, 6, 2)[1]


@pytest.mark.parametrize("seed", SEEDS)
def test_natural_same_lists_in_runs_and_scattered(seed):
    rng = np.random.default_rng(seed)
    scattered = rng.integers(0, 300, 5_000)
    runs = np.repeat(rng.permutation(300), rng.integers(1, 40, 300))
    for groups in (scattered, runs, np.concatenate((runs, scattered))):
        ids = np.unique(groups)
        assert_same_lists(P.natural(groups, len(ids) - 3), [np.flatnonzero(groups == g) for g in ids[:-3]])


def test_stable_order_is_argsorts():
    rng = np.random.default_rng(0)
    for keys in (rng.integers(-5, 7, 1_000), rng.integers(0, 70_000, 5_000), rng.integers(-(2**33), 2**33, 300), rng.integers(0, 200, 100).astype(np.uint8), rng.integers(-100, 100, 400).astype(np.int8), np.zeros(0, dtype=np.int64)):
        assert np.array_equal(P._stable_order(keys), np.argsort(keys, kind="stable"))
    # 4-byte and unsigned keys, a 17-bit span from an offset, and the span given by the caller
    wide = rng.integers(0, 100_000, 20_000)
    for keys, span in ((wide.astype(np.int32), None), (wide.astype(np.int32), 100_000), (wide.astype(np.uint32), None), (wide + 70_000, None), (wide.astype(np.uint64), 1 << 17), (rng.integers(0, 300_000, 4_000).astype(np.int32), None)):
        assert np.array_equal(P._stable_order(keys, span), np.argsort(keys, kind="stable"))


# --- bad inputs stay one line ---------------------------------------------------------------------


def _one_line(fn, match):
    with pytest.raises(ConfigError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)


def test_bad_inputs_are_one_line_errors(cfg_factory):
    y = _labels(1_000)
    _one_line(lambda: P.power_law(y, 100, 0.3, 0, min_samples=0), "no rows")
    _one_line(lambda: P.dirichlet(y, 200, 0.5, 0, min_samples=6), "exceeds")
    _one_line(lambda: P.quantity_skew(y, 200, 0.5, 0, min_samples=6), "exceeds")
    _one_line(lambda: P.shards(y, 600, 2, 0), "shards")
    _one_line(lambda: P.label_deficient(y, 10, 0, 200), "overlap")
    _one_line(lambda: P.label_deficient(y, 10, 0, 50, target_labels=11), "target_labels")
    _one_line(lambda: P.natural(np.arange(20) % 4, 5), "4 client ids")
    _one_line(lambda: P.natural(None, 5), "client ids")
    _one_line(lambda: P.partition(cfg_factory(clients=3, partition__name="label-deficient", partition__target_keep=0, partition__target_labels=1), np.zeros(30, dtype=np.int64)), "no data")
    _one_line(lambda: cfg_factory(clients=10, engine__cohort=11), "engine.cohort")


def test_sort_runs_sorts_each_run():
    rng = np.random.default_rng(1)
    for sizes in (np.full(50, 7), np.array([0, 1, 5, 64, 65, 3, 0, 200]), np.full(4, 1), np.array([3])):
        values = rng.permutation(int(sizes.sum()) * 3)[: int(sizes.sum())]
        ends = np.cumsum(sizes)
        want = np.concatenate([np.sort(values[e - k : e]) for e, k in zip(ends, sizes)] or [np.zeros(0, dtype=values.dtype)])
        assert np.array_equal(P._sort_runs(values, sizes), want)
