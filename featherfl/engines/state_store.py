"""Per-client persistent state on disk, in memory only for the round's cohort.

Methods keep state per client: FD's device model and its past logits, the compression
wrapper's error-feedback residuals, FAug's generated samples. Held as one dict per client in
the server process, that is population x state in RAM and, at every checkpoint, on disk again
inside ``checkpoint.pt``: at 10^5 clients with 10^4 floats each, 4 GB twice. :class:`DiskStates`
keeps them in an append-only file in the run folder instead (``client_states.<gen>.bin``):

- a client's state is read when a round first touches it and kept in memory until the round's
  checkpoint; then every touched state is appended to the file (``torch.save`` bytes, read back
  with ``weights_only=True``) and dropped from memory. RAM holds the cohort's states plus three
  numbers per client (offset, length, CRC-32 of its last record).
- the checkpoint holds those three numbers for the clients that have a state, and the file's
  committed length, not the states. A
  round's records are appended only after the round, inside :meth:`commit`, which the checkpoint
  calls; a ``kill -9`` before the checkpoint leaves records past the committed length, which
  :meth:`restore` cuts off. So ``--resume`` reads exactly the states of the checkpointed round,
  as with states held in the checkpoint itself.
- when the file holds more than twice the live records (and over :data:`COMPACT_MIN_BYTES`),
  :meth:`commit` copies the live records into the next generation's file; the older file is
  removed at the commit after, once a checkpoint naming the new one has been written.
"""

from __future__ import annotations

import io
import os
import re
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

#: Below this many bytes of dead records a file is never rewritten.
COMPACT_MIN_BYTES = 64 * 2**20
_NAME = re.compile(r"^client_states\.(\d+)\.bin$")


class StateStoreError(RuntimeError):
    pass


def _encode(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _decode(raw: bytes) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


class DiskStates:
    """A mapping ``cid -> state dict`` for a population of ``population`` clients, kept in
    ``folder``. Only what engines use of a dict: ``setdefault``, ``get``, ``[]``, ``in``,
    ``len``; plus :meth:`peek` (read without keeping), :meth:`commit` and :meth:`restore`."""

    def __init__(self, folder: Path, population: int):
        self.folder = Path(folder)
        self.population = population
        self.offsets = np.full(population, -1, dtype=np.int64)
        self.lengths = np.zeros(population, dtype=np.int64)
        self.crcs = np.zeros(population, dtype=np.int64)
        self.cache: dict[int, dict] = {}
        self.gen = 0
        self.length = 0  # committed bytes of the current file
        self._drop_older_than = None

    # --- the file ----------------------------------------------------------------------
    def path(self, gen: int | None = None) -> Path:
        return self.folder / f"client_states.{self.gen if gen is None else gen}.bin"

    def _read(self, cid: int) -> dict:
        off, n = int(self.offsets[cid]), int(self.lengths[cid])
        with open(self.path(), "rb") as f:
            f.seek(off)
            raw = f.read(n)
        if len(raw) != n or zlib.crc32(raw) != int(self.crcs[cid]):
            raise StateStoreError(f"{self.path()}: client {cid}'s state is truncated or corrupt; the run cannot resume from it")
        return _decode(raw)

    # --- what engines use of a dict ----------------------------------------------------
    def __contains__(self, cid) -> bool:
        cid = int(cid)
        return cid in self.cache or bool(self.offsets[cid] >= 0)

    def __len__(self) -> int:
        return int((self.offsets >= 0).sum()) + sum(1 for c in self.cache if self.offsets[c] < 0)

    def __getitem__(self, cid) -> dict:
        cid = int(cid)
        if cid not in self:
            raise KeyError(cid)
        return self.setdefault(cid, {})

    def get(self, cid, default=None):
        return self[cid] if cid in self else default

    def setdefault(self, cid, default: dict) -> dict:
        """The client's state, kept in memory (and written back at the next commit)."""
        cid = int(cid)
        if cid not in self.cache:
            self.cache[cid] = self._read(cid) if self.offsets[cid] >= 0 else default
        return self.cache[cid]

    def held_ids(self) -> list[int]:
        """Clients with a state: written ones and non-empty ones in memory."""
        ids = set(np.flatnonzero(self.offsets >= 0).tolist())
        ids.update(c for c, st in self.cache.items() if st)
        return sorted(ids)

    def peek(self, cid) -> dict:
        """The client's state for reading only (evaluation): not kept, not written back."""
        cid = int(cid)
        if cid in self.cache:
            return self.cache[cid]
        return self._read(cid) if self.offsets[cid] >= 0 else {}

    # --- checkpoints ---------------------------------------------------------------------
    def commit(self) -> dict:
        """Append every state touched since the last commit, make it durable, forget it, and
        return what a checkpoint records (the index and the committed length)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._drop_older_than is not None:  # the last checkpoint names the newer file: the old one can go
            self._remove_generations(lambda g: g < self._drop_older_than)
            self._drop_older_than = None
        with open(self.path(), "r+b" if self.path().exists() else "wb") as f:
            f.truncate(self.length)
            f.seek(self.length)
            for cid in sorted(self.cache):
                if not self.cache[cid] and self.offsets[cid] < 0:
                    continue  # an empty state never written: nothing to keep (FedAvg's clients)
                raw = _encode(self.cache[cid])
                self.offsets[cid], self.lengths[cid], self.crcs[cid] = self.length, len(raw), zlib.crc32(raw)
                f.write(raw)
                self.length += len(raw)
            f.flush()
            os.fsync(f.fileno())
        self.cache.clear()
        live = int(self.lengths[self.offsets >= 0].sum())
        if self.length - live > max(live, COMPACT_MIN_BYTES):
            self._compact()
        return self.descriptor()

    def descriptor(self) -> dict:
        """The index of the clients that have a state (only they: a checkpoint stays small while
        few clients have been sampled)."""
        ids = np.flatnonzero(self.offsets >= 0)
        return {
            "store": "disk",
            "generation": self.gen,
            "length": self.length,
            "population": self.population,
            "ids": torch.from_numpy(ids.astype(np.int64)),
            "offsets": torch.from_numpy(self.offsets[ids]),
            "lengths": torch.from_numpy(self.lengths[ids]),
            "crcs": torch.from_numpy(self.crcs[ids]),
        }

    def _compact(self) -> None:
        old, new_gen = self.path(), self.gen + 1
        new = self.path(new_gen)
        offsets = self.offsets.copy()
        pos = 0
        with open(old, "rb") as src, open(new, "wb") as dst:
            for cid in np.flatnonzero(self.offsets >= 0):
                src.seek(int(self.offsets[cid]))
                dst.write(src.read(int(self.lengths[cid])))
                offsets[cid] = pos
                pos += int(self.lengths[cid])
            dst.flush()
            os.fsync(dst.fileno())
        self.offsets, self.gen, self.length = offsets, new_gen, pos
        self._drop_older_than = new_gen

    def restore(self, desc: dict) -> None:
        """Back to a checkpoint's index: records appended after it are cut off, later files removed."""
        if not isinstance(desc, dict) or desc.get("store") != "disk":
            raise StateStoreError("the checkpoint holds client states in memory, this run keeps them on disk (engine.client_state)")
        gen, length = int(desc["generation"]), int(desc["length"])
        if int(desc.get("population", -1)) != self.population:
            raise StateStoreError(f"the checkpoint's client-state index is for {desc.get('population')} clients, the run has {self.population}")
        ids, off, lens, crc = (np.asarray(desc[k], dtype=np.int64) for k in ("ids", "offsets", "lengths", "crcs"))
        if not (len(ids) == len(off) == len(lens) == len(crc)) or (len(ids) and (ids.min() < 0 or ids.max() >= self.population)):
            raise StateStoreError("the checkpoint's client-state index is malformed")
        offsets = np.full(self.population, -1, dtype=np.int64)
        lengths = np.zeros(self.population, dtype=np.int64)
        crcs = np.zeros(self.population, dtype=np.int64)
        offsets[ids], lengths[ids], crcs[ids] = off, lens, crc
        if len(ids) and int((off + lens).max()) > length:
            raise StateStoreError("the checkpoint's client-state index points past the committed file")
        self.gen = gen
        path = self.path()
        have = path.stat().st_size if path.exists() else -1
        if have < length:
            raise StateStoreError(f"{path} holds {max(have, 0)} bytes, the checkpoint needs {length}: the client-state file is missing or cut short")
        with open(path, "r+b") as f:
            f.truncate(length)
        self._remove_generations(lambda g: g != gen)
        self.offsets, self.lengths, self.crcs, self.length = offsets, lengths, crcs, length
        self.cache.clear()
        self._drop_older_than = None

    def _remove_generations(self, which) -> None:
        for p in self.folder.glob("client_states.*.bin"):
            m = _NAME.match(p.name)
            if m and which(int(m.group(1))):
                p.unlink(missing_ok=True)

    def memory_bytes(self) -> int:
        """The index: what this store holds in RAM for the whole population (the cache aside)."""
        return int(self.offsets.nbytes + self.lengths.nbytes + self.crcs.nbytes)
