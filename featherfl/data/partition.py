"""Partitioners: split training indices across clients, each driven by a seed.

All return ``list[np.ndarray]`` of sorted sample indices, one per client.
Except ``label_deficient`` (which drops samples on purpose, as the FD paper
does) every sample is assigned to exactly one client.
"""

from __future__ import annotations

import numpy as np

from featherfl.config import ConfigError


def iid(labels: np.ndarray, n_clients: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels)).astype(np.int64, copy=False)
    # np.array_split's pieces (the first n % clients one longer), each sorted: as two 2-D blocks
    # sorted along their rows in one call each, not one sort per client
    size, longer = divmod(len(perm), n_clients)
    cut = longer * (size + 1)
    flat = np.concatenate([np.sort(perm[:cut].reshape(longer, size + 1), axis=1).reshape(-1), np.sort(perm[cut:].reshape(n_clients - longer, size), axis=1).reshape(-1)])
    offsets = np.concatenate(([0], np.cumsum(np.where(np.arange(n_clients) < longer, size + 1, size))))
    return Parts(flat, offsets.astype(np.int64))


def dirichlet(labels: np.ndarray, n_clients: int, alpha: float, seed: int, min_samples: int = 10, max_tries: int = 20) -> list[np.ndarray]:
    """Per class, client shares ~ Dir(alpha) (Hsu et al. 2019).

    Up to ``max_tries`` whole draws are made until every client holds ``min_samples``;
    if none does (many clients, small alpha), the last draw is repaired by moving
    randomly chosen samples from the largest clients to the short ones, so the split
    always succeeds when ``clients x min_samples`` fits the data (checked up front).
    Each draw is vectorised over clients (one ``bincount``-style pass per class), so
    10^5 clients take seconds, not minutes.
    """
    n = len(labels)
    if min_samples * n_clients > n:
        raise ConfigError(f"partition.min_samples={min_samples} x clients={n_clients} exceeds the {n} training samples")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    by_class = np.argsort(labels, kind="stable")  # each class's rows, ascending: one sort, not a scan per class
    starts = np.searchsorted(labels[by_class], classes)
    ends = np.append(starts[1:], n)
    owner = np.empty(n, dtype=np.int64)
    tries = max(1, max_tries)
    for t in range(tries):
        draw, counts = [], np.zeros(n_clients, dtype=np.int64)
        for lo, hi in zip(starts, ends):
            idx = by_class[lo:hi].copy()
            rng.shuffle(idx)
            p = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            sizes = np.diff(np.concatenate(([0], cuts, [len(idx)])))
            counts += sizes
            draw.append((idx, sizes))
        if counts.min() >= min_samples or t == tries - 1:
            # rows are given their owner only for the draw that is kept: a scatter over every
            # row per rejected try was most of the time at 10^5 clients
            for idx, sizes in draw:
                owner[idx] = np.repeat(np.arange(n_clients), sizes)
            if counts.min() >= min_samples:
                return _groups(owner, n_clients)
    _top_up(owner, counts, min_samples, rng)
    return _groups(owner, n_clients)


class Parts(list):
    """A partition (one sorted index array per client) cut from one flat array: ``flat`` holds
    every client's indices in client order and ``offsets`` where each starts, so a population
    can use them as they are (``featherfl.data.population``)."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        super().__init__(flat[a:b] for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()))
        self.flat, self.offsets = flat, offsets

    def first(self, n: int) -> "Parts":
        return Parts(self.flat[: self.offsets[n]], self.offsets[: n + 1])


def _groups(owner: np.ndarray, n_clients: int) -> Parts:
    """Sorted sample indices per client from an owner-per-sample array, in one stable sort."""
    order = np.argsort(owner, kind="stable").astype(np.int64, copy=False)
    offsets = np.zeros(n_clients + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=n_clients), out=offsets[1:])
    return Parts(order, offsets)


def _top_up(owner: np.ndarray, counts: np.ndarray, min_samples: int, rng: np.random.Generator) -> None:
    """Move random samples to the clients below ``min_samples``, in place.

    Only a client's samples beyond its own first ``min_samples`` (in a random order) may
    move, so no donor drops below the minimum; the movers are drawn uniformly from that
    spare pool, so donors give in proportion to their surplus.
    """
    need = np.clip(min_samples - counts, 0, None)
    order = np.lexsort((rng.random(len(owner)), owner))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(len(owner)) - starts[owner[order]]
    pool = order[rank >= min_samples]
    moved = rng.choice(pool, size=int(need.sum()), replace=False)
    owner[moved] = np.repeat(np.arange(len(counts)), need)


def shards(labels: np.ndarray, n_clients: int, shards_per_client: int, seed: int) -> list[np.ndarray]:
    """Sort by label, cut into ``n_clients * k`` shards, give each client ``k`` (McMahan et al. 2017)."""
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    n_shards = n_clients * shards_per_client
    if n_shards > len(labels):
        raise ConfigError(f"shards: {n_shards} shards for only {len(labels)} samples")
    assign = rng.permutation(n_shards)
    # The shards np.array_split would cut (the first n % n_shards one longer), as an owner per
    # sorted row, then one stable grouping: no loop over clients.
    base, longer = divmod(len(labels), n_shards)
    shard_of_row = np.repeat(np.arange(n_shards), np.where(np.arange(n_shards) < longer, base + 1, base))
    client_of_shard = np.empty(n_shards, dtype=np.int64)
    client_of_shard[assign] = np.arange(n_shards) // shards_per_client
    owner = np.empty(len(labels), dtype=np.int64)
    owner[order] = client_of_shard[shard_of_row]
    return _groups(owner, n_clients)


def quantity_skew(labels: np.ndarray, n_clients: int, alpha: float, seed: int, min_samples: int = 10) -> list[np.ndarray]:
    """IID labels, client sizes ~ Dir(alpha), each at least ``min_samples``."""
    n = len(labels)
    if min_samples * n_clients > n:
        raise ConfigError(f"partition.min_samples={min_samples} x clients={n_clients} exceeds the {n} training samples")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    extra = n - min_samples * n_clients
    p = rng.dirichlet(np.full(n_clients, alpha))
    sizes = min_samples + np.floor(p * extra).astype(int)
    sizes[np.argmax(p)] += n - sizes.sum()
    cuts = np.cumsum(sizes)[:-1]
    return [np.sort(c) for c in np.split(perm, cuts)]


def power_law(labels: np.ndarray, n_clients: int, exponent: float, seed: int, min_samples: int = 10) -> list[np.ndarray]:
    """IID labels, client sizes from a power law (Pareto with tail index ``exponent``), as
    cross-device populations have: most clients hold little, a few hold much (LEAF's
    FEMNIST/Shakespeare writers, Caldas et al. 2018). Each client gets ``min_samples`` rows plus
    a share of the rest proportional to its Pareto weight; the largest weight takes the
    rounding remainder. O(n): one permutation and one split."""
    n = len(labels)
    if min_samples * n_clients > n:
        raise ConfigError(f"partition.min_samples={min_samples} x clients={n_clients} exceeds the {n} training samples")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    weights = rng.pareto(exponent, size=n_clients) + 1.0  # Pareto(x_m = 1, alpha = exponent)
    extra = n - min_samples * n_clients
    sizes = min_samples + np.floor(weights / weights.sum() * extra).astype(np.int64)
    sizes[np.argmax(weights)] += n - sizes.sum()
    empty = int((sizes == 0).sum())
    if empty:
        raise ConfigError(
            f"partition.name=power-law gives {empty:,} of {n_clients:,} clients no rows ({n:,} rows, partition.power={exponent:g}); "
            f"set partition.min_samples >= 1, raise partition.power, or use fewer clients"
        )
    return [np.sort(c) for c in np.split(perm, np.cumsum(sizes)[:-1])]


def label_deficient(
    labels: np.ndarray, n_clients: int, seed: int, samples_per_client: int = 0, target_labels: int = 3, target_keep: int = 5, overlap: bool = False
) -> tuple[list[np.ndarray], list[list[int]]]:
    """The FD paper's non-IID setup (Jeong et al. 2018, Sec. 4): each device draws S samples
    at random, then for T random *target labels* keeps only R samples.

    Draws are disjoint across devices; with ``overlap`` each device draws its S samples from
    the whole pool on its own (distinct within a device, shared across devices), which lets
    S x devices exceed the pool (e.g. the paper's 10 x 2,000 from an 8,000-sample pool).

    Returns (indices per client, target labels per client).
    """
    n = len(labels)
    classes = np.unique(labels)
    s = samples_per_client or n // n_clients
    if overlap and s > n:
        raise ConfigError(f"partition.samples_per_client={s} exceeds the {n} training samples")
    if not overlap and s * n_clients > n:
        raise ConfigError(f"partition.samples_per_client={s} x clients={n_clients} exceeds the {n} training samples; set partition.overlap=true to let devices share samples")
    if target_labels > len(classes):
        raise ConfigError(f"partition.target_labels={target_labels} exceeds the {len(classes)} labels")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    # The draws stay one client at a time, in the same order (the same seed gives the same split);
    # what each device keeps is then worked out for all devices at once.
    drawn = np.empty((n_clients, s), dtype=np.int64)
    tgt = np.empty((n_clients, target_labels), dtype=labels.dtype)
    for i in range(n_clients):
        drawn[i] = rng.choice(n, size=s, replace=False) if overlap else perm[i * s : (i + 1) * s]
        tgt[i] = np.sort(rng.choice(classes, size=target_labels, replace=False))
    lab = labels[drawn]
    keep = np.ones(drawn.shape, dtype=bool)
    for j in range(target_labels):  # a target label keeps only its first target_keep samples (in draw order)
        hit = lab == tgt[:, j : j + 1]
        keep &= ~hit | (np.cumsum(hit, axis=1) <= target_keep)
    counts = keep.sum(axis=1)
    kept = np.sort(np.where(keep, drawn, np.iinfo(np.int64).max), axis=1)
    parts = [row[:k] for row, k in zip(kept, counts)]
    return parts, tgt.astype(int).tolist()


def natural(groups: np.ndarray | None, n_clients: int) -> list[np.ndarray]:
    """One client per distinct client id in the data (sorted ids; the first ``n_clients`` of them)."""
    if groups is None:
        raise ConfigError("partition.name=natural needs client ids in the data (an npz client_train array or a csv data.client_column)")
    groups = np.asarray(groups).reshape(-1)
    if groups.dtype.kind in "iu" and len(groups) and groups.min() >= 0 and groups.max() < 4 * len(groups) + 1024:
        # small non-negative ids (what the readers give): rank them by counting, not by a sort
        present = np.bincount(groups) > 0
        rank = np.cumsum(present) - 1
        n_ids, owner = int(present.sum()), rank[groups]
    else:
        ids, owner = np.unique(groups, return_inverse=True)
        n_ids, owner = len(ids), owner.reshape(-1)
    if n_clients > n_ids:
        raise ConfigError(f"partition.name=natural: the data has {n_ids} client ids, fewer than clients={n_clients}")
    # One stable sort, not a scan per id: O(n log n) instead of O(rows x clients), which at 10^5
    # clients would dominate the run. Stability keeps each client's indices ascending.
    return _groups(owner, n_ids).first(n_clients)


def partition(cfg, labels: np.ndarray, groups: np.ndarray | None = None) -> tuple[list[np.ndarray], dict]:
    """Apply the configured partitioner. Returns (indices per client, extra info for the run folder)."""
    name = cfg["partition.name"]
    n = cfg["clients"]
    seed = cfg["seed"]
    info: dict = {}
    if name == "iid":
        parts = iid(labels, n, seed)
    elif name == "dirichlet":
        parts = dirichlet(labels, n, cfg["partition.alpha"], seed, cfg["partition.min_samples"])
    elif name == "shards":
        parts = shards(labels, n, cfg["partition.shards_per_client"], seed)
    elif name == "quantity-skew":
        parts = quantity_skew(labels, n, cfg["partition.alpha"], seed, cfg["partition.min_samples"])
    elif name == "power-law":
        parts = power_law(labels, n, cfg["partition.power"], seed, cfg["partition.min_samples"])
    elif name == "natural":
        parts = natural(groups, n)
        info["client_ids_in_data"] = int(len(np.unique(groups)))
    elif name == "label-deficient":
        parts, targets = label_deficient(
            labels, n, seed, cfg["partition.samples_per_client"], cfg["partition.target_labels"], cfg["partition.target_keep"], cfg["partition.overlap"]
        )
        info["target_labels"] = targets
    else:  # pragma: no cover - the schema restricts the choices
        raise ConfigError(f"unknown partitioner {name!r}")
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        shown = ", ".join(str(i) for i in empty[:5]) + (f" and {len(empty) - 5:,} more" if len(empty) > 5 else "")
        raise ConfigError(f"partition {name} left {len(empty):,} client(s) with no data ({shown}); use fewer clients or another partitioner")
    return parts, info


def label_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> list[list[int]]:
    return label_histograms(labels, parts, num_classes).astype(int).tolist()


def label_histograms(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(clients, classes) label counts in one ``bincount`` over all rows, not one per client."""
    if not len(parts):
        return np.zeros((0, num_classes), dtype=np.int64)
    if isinstance(parts, Parts):
        sizes, flat = np.diff(parts.offsets), parts.flat
    else:
        sizes = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
        flat = np.concatenate(parts).astype(np.int64, copy=False)
    owner = np.repeat(np.arange(len(parts), dtype=np.int64), sizes)
    bins = owner * num_classes + labels[flat].astype(np.int64, copy=False)
    return np.bincount(bins, minlength=len(parts) * num_classes).reshape(len(parts), num_classes)
