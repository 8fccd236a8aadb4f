"""Byte-level building blocks of the compressed encodings: a bounds-checked reader, LEB128
varints, fixed-width bit packing, and float arrays. Pure functions on numpy arrays and bytes;
every malformed input raises :class:`featherfl.wire.PayloadError`, so a hostile payload is a
counted rejection in the engine, never a crash.
"""

from __future__ import annotations

import numpy as np

from featherfl.wire import PayloadError

MAX_VARINT_BYTES = 5  # a u32


class Reader:
    """Reads an encoding front to back; every read is bounds-checked and ``done`` demands the end."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.off = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.off + n > len(self.data):
            raise PayloadError("truncated", f"compressed {what}: {n} bytes past the end")
        out = bytes(self.data[self.off : self.off + n])
        self.off += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def floats(self, n: int, dtype: str, what: str) -> np.ndarray:
        dt = np.dtype("<f4") if dtype == "float32" else np.dtype("<f2")
        v = np.frombuffer(self.take(n * dt.itemsize, what), dtype=dt).astype(np.float32)
        if not np.isfinite(v).all():
            raise PayloadError("non-finite", f"compressed {what}")
        return v

    def done(self) -> None:
        if self.off != len(self.data):
            raise PayloadError("trailing-bytes", f"compressed payload: {len(self.data) - self.off} bytes after the last tensor")


def float_bytes(v: np.ndarray, dtype: str) -> bytes:
    """``v`` as little-endian float32 or float16; float16 saturates at its largest finite value."""
    if dtype == "float32":
        return np.ascontiguousarray(v, dtype="<f4").tobytes()
    big = float(np.finfo(np.float16).max)
    return np.clip(np.asarray(v, dtype=np.float32), -big, big).astype("<f2").tobytes()


def varint_bytes(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of each value (u32), vectorised: 7 bits a byte, high bit = more follows."""
    v = np.asarray(values, dtype=np.uint64)
    if v.size == 0:
        return b""
    nbytes = np.ones(v.shape, dtype=np.int64)
    for i in range(1, MAX_VARINT_BYTES):
        nbytes += v >= (1 << (7 * i))
    out = np.zeros(int(nbytes.sum()), dtype=np.uint8)
    starts = np.concatenate([[0], np.cumsum(nbytes)[:-1]])
    for i in range(MAX_VARINT_BYTES):
        has = nbytes > i
        byte = (v[has] >> np.uint64(7 * i)) & np.uint64(0x7F)
        more = (nbytes[has] > i + 1).astype(np.uint64) << np.uint64(7)
        out[starts[has] + i] = (byte | more).astype(np.uint8)
    return out.tobytes()


def varint_size(values: np.ndarray) -> int:
    v = np.asarray(values, dtype=np.uint64)
    return int(v.size + sum(int((v >= (1 << (7 * i))).sum()) for i in range(1, MAX_VARINT_BYTES)))


def read_varints(r: Reader, count: int, what: str) -> np.ndarray:
    """Exactly ``count`` varints from ``r`` (each at most 5 bytes, canonical: no zero padding byte)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    rest = np.frombuffer(r.data[r.off : r.off + count * MAX_VARINT_BYTES], dtype=np.uint8)
    ends = np.flatnonzero(rest < 0x80)
    if ends.size < count:
        raise PayloadError("truncated", f"compressed {what}: fewer than {count} varints")
    stop = int(ends[count - 1]) + 1
    b = rest[:stop].astype(np.int64)
    ends = ends[:count]
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if (lengths > MAX_VARINT_BYTES).any():
        raise PayloadError("bad-indices", f"compressed {what}: a varint longer than {MAX_VARINT_BYTES} bytes")
    if ((lengths > 1) & (b[ends] == 0)).any():
        raise PayloadError("bad-indices", f"compressed {what}: a non-canonical varint")
    pos = np.arange(stop) - np.repeat(starts, lengths)
    values = np.add.reduceat((b & 0x7F) << (7 * pos), starts)
    r.off += stop
    return values


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Unsigned codes < 2**bits, ``bits`` each, little-endian bit order; the last byte zero-padded."""
    c = np.asarray(codes, dtype=np.uint8).reshape(-1, 1)
    planes = np.unpackbits(c, axis=1, bitorder="little")[:, :bits]
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def read_codes(r: Reader, count: int, bits: int, what: str) -> np.ndarray:
    """``count`` codes of ``bits`` bits each; the padding bits of the last byte must be zero."""
    total = count * bits
    raw = np.frombuffer(r.take((total + 7) // 8, what), dtype=np.uint8)
    flat = np.unpackbits(raw, bitorder="little")
    if flat[total:].any():
        raise PayloadError("bad-encoding", f"compressed {what}: non-zero padding bits")
    planes = flat[:total].reshape(count, bits)
    return (planes.astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(axis=1).astype(np.int64)
