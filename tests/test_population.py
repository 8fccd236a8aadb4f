"""The population data path: clients are index views gathered per round, partitions unchanged,
array files memory-mapped, per-client metadata bounded, power-law client sizes."""

import json

import numpy as np
import pytest
import torch

from featherfl.config import ConfigError
from featherfl.data import partition as P
from featherfl.data.files import NpzArrays
from featherfl.data.population import ClientPopulation


# Dirichlet lists against a plain reference: tests/test_partition_reference.py


def test_label_histograms_match_per_client_bincounts():
    labels = np.random.default_rng(1).integers(0, 7, 500)
    parts = P.dirichlet(labels, 9, 0.3, 1, min_samples=3)
    hist = P.label_histograms(labels, parts, 7)
    assert hist.tolist() == [np.bincount(labels[p], minlength=7).tolist() for p in parts]


def test_population_gathers_each_client_from_the_shared_array():
    x = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    y = torch.arange(20) % 3
    parts = [np.array([3, 1, 7]), np.array([0]), np.array([19, 2])]
    pop = ClientPopulation(x, y, parts, 3)
    assert len(pop) == 3 and pop.sizes().tolist() == [3, 1, 2]
    assert pop.nbytes() == (4 + 6) * 8  # offsets + flat indices: no copy of the rows
    c = pop[2]
    assert c.cid == 2 and torch.equal(c.x, x[[19, 2]]) and torch.equal(c.y, y[[19, 2]])
    c.x.add_(1)  # a client's tensors are its own: the shared array is untouched
    assert torch.equal(pop[2].x, x[[19, 2]])
    assert [d.cid for d in pop] == [0, 1, 2] and pop[-1].cid == 2
    with pytest.raises(IndexError):
        pop[3]


def test_npz_members_are_memory_mapped_and_equal(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((50, 3, 2), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(50))
    np.savez_compressed(tmp_path / "c.npz", x_train=x)
    with NpzArrays(tmp_path / "d.npz") as z:
        a = z["x_train"]
        assert isinstance(a, np.memmap) and np.array_equal(a, x)
        assert np.array_equal(z["y_train"], np.arange(50))
        a[0, 0, 0] = 99.0  # copy-on-write: the file never changes
    assert np.array_equal(np.load(tmp_path / "d.npz")["x_train"], x)
    with NpzArrays(tmp_path / "c.npz") as z:
        b = z["x_train"]
        assert not isinstance(b, np.memmap) and np.array_equal(b, x)


def test_npz_float32_features_are_not_copied(tmp_path):
    from featherfl.data.files import _features

    a = np.ones((4, 3), dtype=np.float32)
    t, release = _features(a, "x_train", tmp_path / "d.npz")
    assert t.data_ptr() == a.ctypes.data  # the same memory
    assert release is None  # an array in RAM, not a mapped file: no pages to let go of


def test_npz_object_array_is_refused_when_mapped(tmp_path, cfg_factory):
    from featherfl.data.files import load_npz

    np.savez(tmp_path / "o.npz", x_train=np.array([[1.0], [2.0]], dtype=object), y_train=np.array([0, 1]))
    with pytest.raises(ConfigError, match="Python objects"):
        load_npz(cfg_factory(dataset="npz", data__dir=str(tmp_path / "o.npz")))


def test_clients_file_is_bounded_above_the_listed_clients(tmp_path, monkeypatch):
    import featherfl.experiment as E

    monkeypatch.setattr(E, "CLIENTS_LISTED", 3)
    hist = np.arange(20).reshape(10, 2)
    sizes = hist.sum(axis=1)
    E.write_clients_file(tmp_path, {"label_histogram": hist, "client_ids_in_data": 10}, sizes, "note")
    info = json.loads((tmp_path / "clients.json").read_text())
    assert info["clients"] == 10 and len(info["label_histogram"]) == 3 and len(info["samples"]) == 3
    assert info["label_totals"] == hist.sum(axis=0).tolist() and info["samples_summary"]["total"] == int(sizes.sum())
    with np.load(tmp_path / "clients.npz") as z:  # the full table, compressed
        assert z["label_histogram"].tolist() == hist.tolist() and z["samples"].tolist() == sizes.tolist()
    small = tmp_path / "small"
    small.mkdir()
    E.write_clients_file(small, {"label_histogram": hist[:2]}, sizes[:2], "note")
    assert json.loads((small / "clients.json").read_text())["label_histogram"] == hist[:2].tolist()
    assert not (small / "clients.npz").exists()


def test_power_law_sizes_are_skewed_complete_and_seeded():
    labels = np.zeros(5000, dtype=np.int64)
    parts = P.power_law(labels, 100, 1.2, seed=4, min_samples=5)
    sizes = np.array([len(p) for p in parts])
    assert sizes.sum() == 5000 and sizes.min() >= 5
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(5000))  # every row exactly once
    assert sizes.max() > 10 * np.median(sizes)  # a heavy tail, unlike an even split
    again = P.power_law(labels, 100, 1.2, seed=4, min_samples=5)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_power_law_leaving_a_client_empty_is_one_line():
    with pytest.raises(ConfigError, match=r"gives [\d,]+ of 500 clients no rows.*partition.min_samples >= 1") as e:
        P.power_law(np.zeros(600, dtype=np.int64), 500, 0.5, seed=0, min_samples=0)
    assert "\n" not in str(e.value)


def test_power_law_run_through_the_config(cfg_factory):
    cfg = cfg_factory(dataset="digits", clients=20, partition__name="power-law", partition__power=1.0, partition__min_samples=8)
    parts, _ = P.partition(cfg, np.zeros(1000, dtype=np.int64))
    assert sum(len(p) for p in parts) == 1000 and min(len(p) for p in parts) >= 8


def test_population_reuses_a_partition_cut_from_one_array():
    order = np.array([4, 0, 2, 1, 3, 5], dtype=np.int64)
    parts = P.Parts(order, np.array([0, 2, 5, 6]))
    assert [p.tolist() for p in parts] == [[4, 0], [2, 1, 3], [5]] and [p.tolist() for p in parts.first(2)] == [[4, 0], [2, 1, 3]]
    pop = ClientPopulation(torch.zeros(6, 1), torch.zeros(6, dtype=torch.int64), parts, 2)
    assert pop.flat is order and [pop.indices(i).tolist() for i in range(3)] == [[4, 0], [2, 1, 3], [5]]
    shuffled = [parts[1], parts[0], parts[2]]  # a plain list: copied, still right
    pop2 = ClientPopulation(torch.zeros(6, 1), torch.zeros(6, dtype=torch.int64), shuffled, 2)
    assert pop2.flat is not order and [pop2.indices(i).tolist() for i in range(3)] == [[2, 1, 3], [4, 0], [5]]
    labels = np.array([0, 1, 1, 0, 1, 0])
    assert P.label_histograms(labels, parts, 2).tolist() == P.label_histograms(labels, list(parts), 2).tolist() == [[1, 1], [1, 2], [1, 0]]


def test_npz_mapped_training_rows_are_checked_and_read_back_whole(tmp_path, cfg_factory):
    from featherfl.data.files import load_npz

    rng = np.random.default_rng(2)
    x = rng.random((70_000, 4), dtype=np.float32)  # more than one check block: pages let go block by block
    y = np.arange(70_000) % 3
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    ds = load_npz(cfg_factory(dataset="npz", data__dir=str(tmp_path / "d.npz")))
    assert ds.inputs_checked and np.array_equal(ds.train_x.numpy(), x)  # pages dropped after the check come back intact
    x[65_540, 1] = np.nan
    np.savez(tmp_path / "n.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    with pytest.raises(ConfigError, match="NaN or infinite"):
        load_npz(cfg_factory(dataset="npz", data__dir=str(tmp_path / "n.npz")))


def test_a_mapped_population_lets_go_of_its_pages_once_the_gathers_may_have_mapped_the_budget(tmp_path, cfg_factory, monkeypatch):
    from featherfl.data import population

    from featherfl.data.files import load_npz

    rng = np.random.default_rng(4)
    x = rng.random((3_000, 8), dtype=np.float32)  # 32 bytes a row
    y = np.arange(3_000) % 3
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    ds = load_npz(cfg_factory(dataset="npz", data__dir=str(tmp_path / "d.npz")))
    assert ds.train_pages is not None
    seen = []

    def release(start, stop):
        seen.append((start, stop))
        ds.train_pages(start, stop)

    parts = [np.arange(0, 1_000), np.arange(1_000, 1_100), np.arange(1_100, 3_000, 7)]  # two runs, one scattered client
    pop = ClientPopulation(ds.train_x, ds.train_y, parts, 3, release=release)
    fa = population.FAULT_AROUND
    per = [min(1_000 * 32, 1_000 * fa) + fa, min(100 * 32, 100 * fa) + fa, min((2_997 - 1_100) * 32, 272 * fa) + fa]  # what each gather may map
    monkeypatch.setattr(ClientPopulation, "MAPPED_BUDGET", per[0] + per[1] + 1)  # the third gather crosses it
    for _ in range(2):  # read, let go, read again: the same rows from the file
        for cid, rows in enumerate(parts):
            d = pop[cid]
            assert np.array_equal(d.x.numpy(), x[rows]) and np.array_equal(d.y.numpy(), y[rows])
    assert seen == [(0, 3_000), (0, 3_000)]  # the whole map, once per budget's worth of gathers


def test_only_the_files_own_rows_are_let_go_of(tmp_path, cfg_factory):
    from featherfl.data.files import load_npz
    from featherfl.data.sources import load_dataset

    x = np.random.default_rng(5).random((400, 4), dtype=np.float32)
    y = np.arange(400) % 2
    np.savez(tmp_path / "t.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    np.savez(tmp_path / "s.npz", x_train=x, y_train=y)  # no test split in the file: the training rows are a split's copy
    np.savez_compressed(tmp_path / "c.npz", x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])  # not mapped
    assert load_npz(cfg_factory(dataset="npz", data__dir=str(tmp_path / "t.npz"))).train_pages is not None
    assert load_npz(cfg_factory(dataset="npz", data__dir=str(tmp_path / "s.npz"))).train_pages is None
    assert load_npz(cfg_factory(dataset="npz", data__dir=str(tmp_path / "c.npz"))).train_pages is None
    assert load_dataset(cfg_factory(dataset="npz", data__dir=str(tmp_path / "t.npz"), data__max_train=100)).train_pages is None  # a subset is a copy


def test_a_population_the_machine_cannot_hold_is_refused_before_training(cfg_factory, monkeypatch, tmp_path):
    import featherfl.checks as checks
    from featherfl.experiment import prepare

    monkeypatch.setattr(checks, "available_memory", lambda: 1000)  # bytes: nothing fits
    with pytest.raises(ConfigError, match=r"population of 10 clients over .* rows.*available\. Lower it with clients or data.max_train") as e:
        prepare(cfg_factory(clients=10))
    assert "\n" not in str(e.value)
    monkeypatch.setattr(checks, "available_memory", lambda: 10**9)
    monkeypatch.setattr(checks, "population_bytes", lambda *a: 0)
    from featherfl.algorithms.fd import FD
    from featherfl.algorithms.fedavg import FedAvg

    with pytest.raises(ConfigError, match=r"fd with engine.client_state=memory .*Lower it with engine.client_state=disk"):
        checks.check_client_state_memory(cfg_factory(algorithm="fd", clients=100_000), FD, 10_000, on_disk=False)
    checks.check_client_state_memory(cfg_factory(algorithm="fd", clients=100_000), FD, 10_000, on_disk=True)  # on disk: fine
    checks.check_client_state_memory(cfg_factory(clients=100_000), FedAvg, 10_000, on_disk=False)  # no client models
    np.savez_compressed(tmp_path / "c.npz", x_train=np.zeros((100, 1000), dtype=np.float32))
    monkeypatch.setattr(checks, "available_memory", lambda: 1000)
    with pytest.raises(ConfigError, match=r"compressed, so read whole.*numpy.savez"):
        with NpzArrays(tmp_path / "c.npz") as z:
            z["x_train"]


def _old_shards(labels, n_clients, k, seed):
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    pieces = np.array_split(order, n_clients * k)
    assign = rng.permutation(n_clients * k)
    return [np.sort(np.concatenate([pieces[s] for s in assign[i * k : (i + 1) * k]])) for i in range(n_clients)]


def _old_label_deficient(labels, n_clients, seed, s, target_labels, target_keep, overlap):
    n, classes = len(labels), np.unique(labels)
    s = s or n // n_clients
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    parts, targets = [], []
    for i in range(n_clients):
        idx = rng.choice(n, size=s, replace=False) if overlap else perm[i * s : (i + 1) * s]
        tgt = sorted(rng.choice(classes, size=target_labels, replace=False).tolist())
        keep = [idx[~np.isin(labels[idx], tgt)]] + [idx[labels[idx] == t][:target_keep] for t in tgt]
        parts.append(np.sort(np.concatenate(keep)))
        targets.append([int(t) for t in tgt])
    return parts, targets


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(a, b))


@pytest.mark.parametrize("seed,clients,k,n", [(0, 7, 2, 500), (1, 10, 3, 31), (2, 3, 1, 3)])
def test_shards_give_the_same_lists_as_before(seed, clients, k, n):
    labels = np.random.default_rng(seed).integers(0, 5, n)
    assert _same(P.shards(labels, clients, k, seed), _old_shards(labels, clients, k, seed))


@pytest.mark.parametrize("args", [(9, 0, 0, 3, 5, False), (6, 1, 40, 2, 1, True), (4, 2, 0, 0, 5, False), (12, 3, 30, 3, 0, True)])
def test_label_deficient_gives_the_same_lists_as_before(args):
    clients, seed, s, t, r, overlap = args
    labels = np.random.default_rng(seed).integers(0, 6, 400)
    new, new_t = P.label_deficient(labels, clients, seed, s, t, r, overlap)
    old, old_t = _old_label_deficient(labels, clients, seed, s, t, r, overlap)
    assert _same(new, old) and new_t == old_t


@pytest.mark.parametrize("groups", [np.array([5, 2, 5, 9, 2, 2, 0]), np.array([10**12, 3, 10**12]), np.repeat(np.arange(6), 3)[::-1].copy()])
def test_natural_gives_one_client_per_id_in_sorted_order(groups):
    ids, owner = np.unique(groups, return_inverse=True)
    want = [np.flatnonzero(owner == i) for i in range(len(ids))]
    assert _same(P.natural(groups, len(ids)), want)
    assert _same(P.natural(groups, 2), want[:2])


def test_report_says_where_the_rest_of_a_large_population_is(tmp_path, monkeypatch):
    import featherfl.experiment as E
    from featherfl.report import client_table

    monkeypatch.setattr(E, "CLIENTS_LISTED", 2)
    E.write_clients_file(tmp_path, {"label_histogram": np.ones((5, 3), dtype=int)}, np.full(5, 3), "note")
    text = client_table(tmp_path)
    assert text.count("[1, 1, 1]") == 2 and "the first 2 of 5 clients" in text and "clients.npz" in text


@pytest.mark.parametrize("n,clients", [(100, 7), (60, 6), (5, 5), (13, 1)])
def test_iid_gives_the_same_lists_as_before(n, clients):
    labels = np.zeros(n, dtype=np.int64)
    rng = np.random.default_rng(3)
    old = [np.sort(p) for p in np.array_split(rng.permutation(n), clients)]
    assert _same(P.iid(labels, clients, 3), old)
