"""Partitioners: split training indices across clients, each driven by a seed.

All return ``list[np.ndarray]`` of sorted sample indices, one per client.
Except ``label_deficient`` (which drops samples on purpose, as the FD paper
does) every sample is assigned to exactly one client.
"""

from __future__ import annotations

import numpy as np

from featherfl.config import ConfigError

# Below this many clients the Dirichlet split makes all its tries whatever they show (see
# ``dirichlet``), so every split of a smaller population is the one the plain retry loop gives.
_ALL_TRIES_BELOW = 10_000
# A draw that leaves this many clients short ends the tries of a large population: see ``dirichlet``.
_HOPELESS_SHORT = 32


def _stable_order(keys: np.ndarray, span: int | None = None) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for integer keys, the same permutation, in 16-bit passes.

    numpy sorts keys of 16 bits or fewer by counting (radix sort, O(n)); wider keys go through
    a comparison sort, about five times slower at 6,000,000 keys. Keys spanning under 2^32 are
    ordered by their low 16 bits, then stably by their high 16 bits: a stable sort by the whole
    key, so the permutation is the one ``argsort`` gives. ``span``: ``keys`` are known to lie
    in ``[0, span)`` (saves the min/max scan)."""
    keys = np.asarray(keys)
    if keys.dtype.kind not in "iu" or not len(keys):
        return np.argsort(keys, kind="stable")
    lo = 0
    if span is None:
        lo, hi = int(keys.min()), int(keys.max())
        span = hi - lo + 1
    if span > 1 << 32:
        return np.argsort(keys, kind="stable")
    k = keys
    if lo:
        k = keys.astype(np.uint64 if keys.dtype.kind == "u" else np.int64) - lo
    # the low 16 bits by a wrapping cast (keys are non-negative here), without a masked 8-byte copy
    if span <= 1 << 16:
        return np.argsort(k.astype(np.uint16), kind="stable")
    order = np.argsort(k.astype(np.uint16), kind="stable")
    if span <= 1 << 17:  # high halves 0 and 1 only: a stable partition (two sequential selections, no second sort and gather)
        high = (k >= 1 << 16)[order]  # in that order: a gather of 1-byte flags
        out = np.empty_like(order)
        first = len(order) - int(np.count_nonzero(high))
        np.compress(~high, order, out=out[:first])
        np.compress(high, order, out=out[first:])
        return out
    high = (k >> 16).astype(np.uint16)[order]  # the high halves in that order: a gather of 2-byte, not 8-byte, keys
    return order[np.argsort(high, kind="stable")]


def _classes(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(labels, return_counts=True)``; small non-negative integer labels (what the
    data sources give) by counting, about ten times faster than unique's sort or hash at
    6,000,000 labels."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "iu" and len(labels) and labels.min() >= 0 and labels.max() < 4 * len(labels) + 1024:
        counts = np.bincount(labels)
        classes = np.flatnonzero(counts)
        return classes.astype(labels.dtype), counts[classes]
    return np.unique(labels, return_counts=True)


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
    Each draw is vectorised over clients (one ``bincount``-style pass per class).

    From 10,000 clients on, a draw that leaves 32 or more clients short ends the tries and
    is the one repaired. Whether a client comes up short is close to independent from client
    to client, so the count of short clients in a draw is close to Poisson, and a draw with
    none has a chance of about e^-32 (10^-14) at that rate: the tries left would all fail.
    They are not skipped for their outcome but for their cost: each try's random draws
    (a shuffle of every class and a Dirichlet vector over all clients per class, both by
    rejection sampling, so the random stream cannot be jumped over) take about 0.1 s at
    10^5 clients x 60 rows, 2 s for 20 tries, and numpy gives no faster way to the state
    the 20th try starts from. So for such populations the split is the first hopeless draw
    repaired, where the plain retry loop repaired the last one; below 10,000 clients (or
    with fewer short clients) every try is made as before and the split is the same.
    """
    n = len(labels)
    if min_samples * n_clients > n:
        raise ConfigError(f"partition.min_samples={min_samples} x clients={n_clients} exceeds the {n} training samples")
    rng = np.random.default_rng(seed)
    classes, per_class = _classes(labels)
    by_class = _stable_order(labels)  # each class's rows, ascending: one sort, not a scan per class
    ends = np.cumsum(per_class)
    starts = ends - per_class
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
        short = int(np.count_nonzero(counts < min_samples))
        if not short or (n_clients >= _ALL_TRIES_BELOW and short >= _HOPELESS_SHORT):
            break
    # rows are given their owner only for the draw that is kept: a scatter over every row per
    # rejected try was most of the time at 10^5 clients
    owner = np.empty(n, dtype=np.int32 if n_clients < 1 << 31 else np.int64)  # 4-byte owners: half the scatter's and the grouping's memory traffic
    clients = np.arange(n_clients, dtype=owner.dtype)
    for idx, sizes in draw:
        owner[idx] = np.repeat(clients, sizes)
    if short:
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
    """Sorted sample indices per client from an owner-per-sample array: one stable grouping.

    Where the owners come in runs (client ids in data files usually do), the runs are grouped
    instead of the rows: each run is a block of ascending indices, so a client's runs in order
    are its indices in order."""
    offsets = np.zeros(n_clients + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=n_clients), out=offsets[1:])
    n = len(owner)
    if n and np.count_nonzero(owner[1:] != owner[:-1]) < n // 4:  # counted first: scattered owners need no list of run starts
        run_start = np.flatnonzero(owner[1:] != owner[:-1]) + 1
        starts = np.concatenate(([0], run_start)).astype(np.int64)
        by_owner = _stable_order(owner[starts], n_clients)
        return Parts(_expand_runs(starts[by_owner], np.diff(np.append(starts, n))[by_owner]), offsets)
    return Parts(_stable_order(owner, n_clients), offsets)


def _expand_runs(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concatenate([arange(a, a + k) for a, k in zip(starts, lengths)])``, without the loop."""
    before = np.cumsum(lengths) - lengths
    return np.repeat(starts - before, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


def _sort_runs(values: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``values`` with each consecutive run of ``sizes[i]`` entries sorted, as one flat array.

    A sort per run cost 0.4 s at 10^5 runs; instead runs of similar length (up to the same
    power of two) are padded with the largest value into the rows of one block and sorted
    along the rows, which numpy does for short rows with sorting networks. ``values`` must not
    hold its dtype's largest value (indices never do)."""
    n = len(values)
    if len(sizes) and sizes[0] > 0 and sizes[0] * len(sizes) == n and bool((sizes == sizes[0]).all()):
        # runs of one length (shards of an even split): the rows of one block as they lie, no padding
        return np.sort(values.reshape(len(sizes), int(sizes[0])), axis=1).reshape(-1)
    out = values.copy()
    ends = np.cumsum(sizes)
    starts = ends - sizes
    bits = np.zeros(len(sizes), dtype=np.int64)
    many = sizes > 1
    bits[many] = np.ceil(np.log2(sizes[many])).astype(np.int64)
    pad = np.iinfo(values.dtype).max
    for b in np.unique(bits[many]).tolist():
        rows = np.flatnonzero(bits == b)
        cols = np.arange(1 << b)
        inside = cols < sizes[rows][:, None]
        at = starts[rows][:, None] + cols
        block = np.where(inside, values[np.minimum(at, n - 1)], pad)
        block.sort(axis=1)
        out[at[inside]] = block[inside]
    return out


def _top_up(owner: np.ndarray, counts: np.ndarray, min_samples: int, rng: np.random.Generator) -> None:
    """Move random samples to the clients below ``min_samples``, in place.

    Only a client's samples beyond its own first ``min_samples`` (in a random order) may
    move, so no donor drops below the minimum; the movers are drawn uniformly from that
    spare pool, so donors give in proportion to their surplus.

    The pool is every client's spare samples, client by client, each client's in the order of
    a uniform key per sample (ties by index). Only the clients a mover is drawn from are
    ordered: a sort of all samples by (client, key) took seconds at 6,000,000 samples, where
    the movers number hundreds. Drawing positions in the pool is the same draw as drawing
    from the pool itself.
    """
    need = np.clip(min_samples - counts, 0, None)
    key = rng.random(len(owner))
    spare = np.clip(counts - min_samples, 0, None)
    pool_end = np.cumsum(spare)
    at = rng.choice(int(pool_end[-1]) if len(pool_end) else 0, size=int(need.sum()), replace=False)
    donor = np.searchsorted(pool_end, at, side="right")
    rank = min_samples + at - (pool_end[donor] - spare[donor])  # each mover's place in its donor's order
    hit = np.zeros(len(counts), dtype=bool)
    hit[donor] = True
    rows = np.flatnonzero(hit[owner])
    rows = rows[np.lexsort((key[rows], owner[rows]))]
    first = np.searchsorted(owner[rows], donor)
    owner[rows[first + rank]] = np.repeat(np.arange(len(counts)), need)


def shards(labels: np.ndarray, n_clients: int, shards_per_client: int, seed: int) -> list[np.ndarray]:
    """Sort by label, cut into ``n_clients * k`` shards, give each client ``k`` (McMahan et al. 2017)."""
    rng = np.random.default_rng(seed)
    order = _stable_order(labels)
    n_shards = n_clients * shards_per_client
    if n_shards > len(labels):
        raise ConfigError(f"shards: {n_shards} shards for only {len(labels)} samples")
    assign = rng.permutation(n_shards)
    # The shards np.array_split would cut (the first n % n_shards one longer); client c holds
    # shards assign[c*k : (c+1)*k]: their rows, one client after another, each client's sorted.
    base, longer = divmod(len(labels), n_shards)
    shard_len = np.where(np.arange(n_shards) < longer, base + 1, base)
    shard_start = np.cumsum(shard_len) - shard_len
    rows = order[_expand_runs(shard_start[assign], shard_len[assign])]
    sizes = shard_len[assign].reshape(n_clients, shards_per_client).sum(axis=1)
    return Parts(_sort_runs(rows, sizes), np.concatenate(([0], np.cumsum(sizes))))


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
    return Parts(_sort_runs(perm, sizes), np.concatenate(([0], np.cumsum(sizes))))  # client i: perm's i-th run, sorted


def power_law(labels: np.ndarray, n_clients: int, exponent: float, seed: int, min_samples: int = 10) -> list[np.ndarray]:
    """IID labels, client sizes from a power law (Pareto with tail index ``exponent``), as
    cross-device populations have: most clients hold little, a few hold much (LEAF's
    FEMNIST/Shakespeare writers, Caldas et al. 2018). Each client gets ``min_samples`` rows plus
    a share of the rest proportional to its Pareto weight; the largest weight takes the
    rounding remainder. One permutation and one grouping by client."""
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
    return Parts(_sort_runs(perm, sizes), np.concatenate(([0], np.cumsum(sizes))))  # client i: perm's i-th run, sorted


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
    classes = _classes(labels)[0]
    s = samples_per_client or n // n_clients
    if overlap and s > n:
        raise ConfigError(f"partition.samples_per_client={s} exceeds the {n} training samples")
    if not overlap and s * n_clients > n:
        raise ConfigError(f"partition.samples_per_client={s} x clients={n_clients} exceeds the {n} training samples; set partition.overlap=true to let devices share samples")
    if target_labels > len(classes):
        raise ConfigError(f"partition.target_labels={target_labels} exceeds the {len(classes)} labels")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    # The draws are those of one client at a time, in the same order (the same seed gives the
    # same split); what each device keeps is then worked out for all devices at once.
    if overlap:  # each device's own S-sample draw comes between its target draws: one at a time
        drawn = np.empty((n_clients, s), dtype=np.int64)
        tgt = np.empty((n_clients, target_labels), dtype=labels.dtype)
        for i in range(n_clients):
            drawn[i] = rng.choice(n, size=s, replace=False)
            tgt[i] = np.sort(rng.choice(classes, size=target_labels, replace=False))
    else:
        drawn = perm[: n_clients * s].reshape(n_clients, s).astype(np.int64, copy=False)
        tgt = _target_labels(rng, classes, n_clients, target_labels)
    lab = labels[drawn]
    keep = np.ones(drawn.shape, dtype=bool)
    for j in range(target_labels):  # a target label keeps only its first target_keep samples (in draw order)
        hit = lab == tgt[:, j : j + 1]
        keep &= ~hit | (np.cumsum(hit, axis=1, dtype=np.int32 if s < 2**31 else np.int64) <= target_keep)
    counts = keep.sum(axis=1)
    kept = np.sort(np.where(keep, drawn, np.iinfo(np.int64).max), axis=1)
    parts = [row[:k] for row, k in zip(kept, counts)]
    return parts, tgt.astype(int).tolist()


def _target_labels(rng: np.random.Generator, classes: np.ndarray, n_clients: int, t: int) -> np.ndarray:
    """``np.sort(rng.choice(classes, size=t, replace=False))`` for each client in turn, as one
    (clients, t) array, with ``rng`` left where those calls leave it.

    One call per client cost 1.5 s at 10^5 clients. numpy draws ``t`` of ``L`` classes by
    Floyd's algorithm (a bounded integer in [0, j] for j = L-t .. L-1, j itself when the draw
    repeats an earlier pick) and then shuffles the ``t`` picks (a bounded integer in [0, i]
    for i = t-1 .. 1); each bounded integer takes one 32-bit word of the generator's stream
    (Lemire's multiply-and-shift) unless the low half of the product falls below
    ``2^32 mod (bound + 1)`` (odds at most ``L / 2^32``), when it takes another. So the words
    for many clients are read at once and worked out together; from the first client whose
    draws would take an extra word, that client's draw is made by ``rng.choice`` itself and
    the block starts again after it. Only the default generator (PCG64) is read this way.
    """
    n_classes = len(classes)
    out = np.empty((n_clients, t), dtype=classes.dtype)
    floyd = list(range(n_classes - t, n_classes))
    width = sum(j > 0 for j in floyd) + t - 1  # words per client: a bound of 0 takes none
    bg = rng.bit_generator
    if n_classes > 10_000 or not t or not isinstance(bg, np.random.PCG64):  # choice takes another path above 10,000
        for i in range(n_clients):
            out[i] = np.sort(rng.choice(classes, size=t, replace=False))
        return out
    done = 0
    while done < n_clients:
        todo = n_clients - done
        start = bg.state
        words = _read_words(bg, todo * width).reshape(todo, width).astype(np.uint64)
        ok = np.ones(todo, dtype=bool)
        picks = np.empty((todo, t), dtype=np.int64)
        col = 0
        for c, j in enumerate(floyd):
            if j == 0:
                picks[:, c] = 0
                continue
            wide = words[:, col] * np.uint64(j + 1)
            ok &= (wide & np.uint64(0xFFFFFFFF)) >= np.uint64((1 << 32) % (j + 1))
            val = (wide >> np.uint64(32)).astype(np.int64)
            seen = (picks[:, :c] == val[:, None]).any(axis=1)
            picks[:, c] = np.where(seen, j, val)
            col += 1
        for i in range(t - 1, 0, -1):
            wide = words[:, col] * np.uint64(i + 1)
            ok &= (wide & np.uint64(0xFFFFFFFF)) >= np.uint64((1 << 32) % (i + 1))
            col += 1
        good = todo if ok.all() else int(np.argmin(ok))
        out[done : done + good] = np.sort(classes[picks[:good]], axis=1)
        if good < todo:  # rewind to just after the good clients' words, then draw the odd one as numpy does
            bg.state = start
            _read_words(bg, good * width)
            out[done + good] = np.sort(rng.choice(classes, size=t, replace=False))
            good += 1
        done += good
    return out


def _read_words(bg, count: int) -> np.ndarray:
    """The next ``count`` 32-bit words of a PCG64 stream as its bounded-integer draws take them
    (each 64-bit output gives its low half, then its high half, which is kept for the next
    word), leaving the generator as ``count`` such draws would."""
    state = bg.state
    head = [state["uinteger"]] if state["has_uint32"] and count else []
    rest = count - len(head)
    raw = bg.random_raw((rest + 1) // 2).astype(np.uint64, copy=False)
    halves = np.empty(2 * len(raw), dtype=np.uint64)
    halves[0::2], halves[1::2] = raw & np.uint64(0xFFFFFFFF), raw >> np.uint64(32)
    state = bg.state
    if rest % 2:
        state["has_uint32"], state["uinteger"] = 1, int(halves[-1])
    elif count:
        state["has_uint32"], state["uinteger"] = 0, 0
    bg.state = state
    return np.concatenate((np.asarray(head, dtype=np.uint64), halves[:rest]))


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
        info["client_ids_in_data"] = int(len(_classes(np.asarray(groups).reshape(-1))[0]))
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
