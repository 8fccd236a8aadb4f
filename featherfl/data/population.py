"""A population of clients as index views into one training array.

Cross-device simulation means a large population (10^4 to 10^5 clients) and a small cohort per
round. Holding each client's rows as its own tensor doubles the training data in memory (and costs
one Python object per client); here the partition is kept as one flat index array with offsets
(compressed sparse rows), and a client's tensors are gathered from the shared arrays only when a
round asks for that client. So memory is the training array plus 8 bytes per row, whatever the
population, and only the round's cohort is ever materialised.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from featherfl.algorithms.base import ClientData


def flatten_parts(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, flat indices) of a partition: client ``i`` holds ``flat[offsets[i]:offsets[i+1]]``.

    Partitioners that cut one sorted array into consecutive pieces (``natural``, ``dirichlet``,
    ``shards``: a ``Parts``) already hold the flat array: it is reused, not copied."""
    flat, offsets = getattr(parts, "flat", None), getattr(parts, "offsets", None)
    if isinstance(flat, np.ndarray) and isinstance(offsets, np.ndarray) and len(offsets) == len(parts) + 1:
        return offsets, flat  # cut from one array already (featherfl.data.partition.Parts)
    sizes = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    flat = np.concatenate(parts).astype(np.int64, copy=False) if parts else np.zeros(0, dtype=np.int64)
    return offsets, flat


#: What the kernel maps around each page a read faults in (Linux's ``fault_around_bytes`` default).
FAULT_AROUND = 64 << 10


class ClientPopulation(Sequence):
    """``population[cid]`` is client ``cid``'s :class:`ClientData`, gathered on demand.

    Behaves as the list of clients engines used to receive (``len``, indexing, iteration), so
    every engine works unchanged; the tensors a client gets are the same values, in the same row
    order, as a per-client copy made up front.
    """

    #: File pages (an estimate) the gathers may leave mapped before the whole map is let go of.
    MAPPED_BUDGET = 256 << 20

    def __init__(self, x: torch.Tensor, y: torch.Tensor, parts: list[np.ndarray], num_classes: int, release=None):
        self.x = x
        self.y = y
        self.num_classes = num_classes
        self.offsets, self.flat = flatten_parts(parts)
        #: ``Dataset.train_pages`` of a memory-mapped ``x``. Every page a gather reads stays mapped
        #: in this process, with the pages the kernel maps around it: over a run at 10^5 clients
        #: that was most of the file (1.3 to 1.9 GB of peak RSS at 6,000,000 rows). So once the
        #: gathers since the last release may have mapped ``MAPPED_BUDGET`` bytes, the whole map is
        #: let go of in one call (clean pages of the file, mapped again when read); one call per
        #: client cost 6 % of a round at cohort 500 in system calls.
        self.release = release
        self._row_bytes = x[0].numel() * x.element_size() if len(x) else 0
        self._mapped = 0

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def indices(self, cid: int) -> np.ndarray:
        return self.flat[self.offsets[cid] : self.offsets[cid + 1]]

    def __getitem__(self, cid):
        if isinstance(cid, slice):
            return [self[i] for i in range(*cid.indices(len(self)))]
        cid = int(cid)
        if cid < 0:
            cid += len(self)
        if not 0 <= cid < len(self):
            raise IndexError(f"client {cid} is not in a population of {len(self)}")
        rows = self.indices(cid)
        idx = torch.from_numpy(rows)
        data = ClientData(cid, self.x[idx], self.y[idx], self.num_classes)
        if self.release is not None and len(rows):
            # what this gather may have mapped: its rows' span (a partition's rows are sorted), or a
            # fault-around block per row where they lie apart, and one block more
            span = (int(rows[-1]) - int(rows[0]) + 1) * self._row_bytes
            self._mapped += min(span, len(rows) * FAULT_AROUND) + FAULT_AROUND
            if self._mapped >= self.MAPPED_BUDGET:
                self.release(0, len(self.x))
                self._mapped = 0
        return data

    def sizes(self) -> np.ndarray:
        """Rows per client, as one array."""
        return np.diff(self.offsets)

    def nbytes(self) -> int:
        return int(self.offsets.nbytes + self.flat.nbytes)
