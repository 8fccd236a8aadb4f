"""The compressors: encode a list of float tensors into bytes, decode and validate them back.

Each tensor of a layout ("segment": a model layer, or a method's tensor field) is encoded on
its own, so per-layer statistics (top-k thresholds, norms, scales, low-rank factors) follow the
papers, and the index encoding is chosen per tensor. One leading byte names the codec.

- ``topk`` (Deep Gradient Compression, Lin et al. 2018, Sec. 2: send only the largest-magnitude
  entries, accumulate the rest locally): k = ceil(ratio x n) entries per tensor; indices as a
  bitmap (ceil(n/8) bytes) or as LEB128 varints of the gaps between sorted indices, whichever is
  smaller, a mode byte saying which; values float32 or float16.
- ``randk`` (random-k sparsification, Stich et al. 2018): k entries chosen by a generator seeded
  from (run seed, round, client, tensor), which the server derives too, so no index is sent;
  without error feedback the values are scaled by n/k, which makes the estimate unbiased.
- ``qsgd`` (Alistarh et al. 2017, Sec. 3.1, with buckets as in their experiments): per bucket of
  ``bucket`` entries, its l2 norm (float32) and each entry's level in {-s..s}, s = 2^(bits-1) - 1,
  chosen by unbiased stochastic rounding of s|x|/norm and packed ``bits`` bits each (sign and
  level together: code = level + s).
- ``sign`` (EF-SignSGD, Karimireddy et al. 2019, Alg. 1): one float32 scale ||x||_1 / n and one
  sign bit per entry; decoded as scale x sign(x).
- ``powersgd`` (Vogels et al. 2019, Alg. 1): a tensor with >= 2 dims is read as a matrix M
  (first dim x the rest); one power iteration from the previous round's Q (warm start,
  Sec. 3: "reuse the previous Q"), P = orth(M Q), Q = M^T P, and P, Q are sent; decoded as P Q^T.
  Vectors, and matrices where the factors would not be smaller, travel dense (float32).

Decoders check everything the papers' encoders guarantee: counts and sizes exact, indices in
range and strictly increasing (so no duplicates), padding bits zero, levels within {-s..s},
values finite, no byte left over. Any failure is a :class:`featherfl.wire.PayloadError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

import featherfl.compress.encoding as enc
from featherfl.seeding import derive_seed, generator
from featherfl.wire import PayloadError

METHODS = ("none", "topk", "randk", "qsgd", "sign", "powersgd")
#: the codec id byte leading every encoding
CODEC_IDS = {m: i for i, m in enumerate(METHODS) if m != "none"}
BITMAP, VARINT = 0, 1


@dataclass(frozen=True)
class Settings:
    method: str
    ratio: float = 0.01
    bits: int = 4
    bucket: int = 512
    rank: int = 2
    values: str = "float32"  # float32 | float16: the values of topk, randk and PowerSGD's factors
    error_feedback: bool = False
    seed: int = 0


def keep_count(n: int, ratio: float) -> int:
    """k for a tensor of n entries at density ``ratio``: ceil(ratio n), at least 1."""
    return max(1, min(n, math.ceil(ratio * n - 1e-9)))


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(rows, cols) PowerSGD compresses ``shape`` as, or None for a vector."""
    if len(shape) < 2:
        return None
    rows = int(shape[0])
    return rows, int(np.prod(shape[1:])) if rows else 0


def low_rank(shape: tuple[int, ...], rank: int) -> tuple[int, int, int] | None:
    """(rows, cols, r) when factors of rank r are smaller than the dense matrix, else None."""
    mc = matrix_shape(shape)
    if mc is None:
        return None
    m, c = mc
    r = min(rank, m, c)
    if r == 0 or r * (m + c) >= m * c:
        return None
    return m, c, r


# --- per-tensor encoders and decoders ---------------------------------------------------------
def topk_encode(x: np.ndarray, k: int, values: str) -> bytes:
    n = x.size
    idx = np.sort(np.argpartition(-np.abs(x), k - 1)[:k]) if k < n else np.arange(n)
    return sparse_encode(x, idx, values)


def sparse_encode(x: np.ndarray, idx: np.ndarray, values: str) -> bytes:
    """Sorted indices (bitmap or gap varints, whichever is smaller) then their values."""
    n = x.size
    gaps = np.diff(idx, prepend=-1) - 1
    bitmap_size = (n + 7) // 8
    if enc.varint_size(gaps) < bitmap_size:
        head = bytes([VARINT]) + enc.varint_bytes(gaps)
    else:
        mask = np.zeros(n, dtype=np.uint8)
        mask[idx] = 1
        head = bytes([BITMAP]) + np.packbits(mask, bitorder="little").tobytes()
    return head + enc.float_bytes(x[idx], values)


def sparse_decode(r: enc.Reader, n: int, k: int, values: str) -> tuple[np.ndarray, np.ndarray]:
    mode = r.u8("index mode")
    if mode == BITMAP:
        raw = np.frombuffer(r.take((n + 7) // 8, "bitmap"), dtype=np.uint8)
        bits = np.unpackbits(raw, bitorder="little")
        if bits[n:].any():
            raise PayloadError("bad-indices", "compressed bitmap: bits past the tensor's end")
        idx = np.flatnonzero(bits[:n])
        if idx.size != k:
            raise PayloadError("bad-count", f"compressed bitmap: {idx.size} entries, expected {k}")
    elif mode == VARINT:
        idx = np.cumsum(enc.read_varints(r, k, "indices") + 1) - 1
        if k and int(idx[-1]) >= n:
            raise PayloadError("bad-indices", f"compressed index {int(idx[-1])} out of range 0..{n - 1}")
    else:
        raise PayloadError("bad-encoding", f"compressed index mode {mode}")
    return idx, r.floats(k, values, "values")


def random_indices(s: Settings, rnd: int, cid: int, key: str, n: int, k: int) -> np.ndarray:
    g = generator(s.seed, "compress-randk", rnd, cid, key)
    return np.sort(torch.randperm(n, generator=g)[:k].numpy())


def qsgd_levels(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def qsgd_encode(x: np.ndarray, s: Settings, rng: np.random.Generator) -> bytes:
    n, B, lv = x.size, s.bucket, qsgd_levels(s.bits)
    pad = (-n) % B
    xb = np.concatenate([x, np.zeros(pad, dtype=np.float32)]).reshape(-1, B).astype(np.float64)
    norms = np.sqrt((xb**2).sum(axis=1)).astype(np.float32)
    safe = np.where(norms > 0, norms, 1.0).astype(np.float64)[:, None]
    scaled = np.abs(xb) / safe * lv
    low = np.floor(scaled)
    level = low + (rng.random(scaled.shape) < (scaled - low))
    level = np.minimum(level, lv) * np.sign(xb)
    codes = (level.reshape(-1)[:n] + lv).astype(np.uint8)
    return enc.float_bytes(norms, "float32") + enc.pack_codes(codes, s.bits)


def qsgd_decode(r: enc.Reader, n: int, s: Settings) -> np.ndarray:
    B, lv = s.bucket, qsgd_levels(s.bits)
    buckets = (n + B - 1) // B
    norms = r.floats(buckets, "float32", "qsgd norms")
    if (norms < 0).any():
        raise PayloadError("out-of-range", "compressed qsgd norm < 0")
    codes = enc.read_codes(r, n, s.bits, "qsgd levels")
    if n and int(codes.max()) > 2 * lv:
        raise PayloadError("out-of-range", f"compressed qsgd level code {int(codes.max())} > {2 * lv}")
    level = (codes - lv).astype(np.float32)
    per = np.repeat(norms, B)[:n]
    return per * level / lv


def sign_encode(x: np.ndarray) -> tuple[bytes, np.ndarray]:
    scale = np.float32(np.abs(x).mean()) if x.size else np.float32(0)
    bits = (x >= 0).astype(np.uint8)
    data = enc.float_bytes(np.array([scale]), "float32") + np.packbits(bits, bitorder="little").tobytes()
    return data, np.where(bits == 1, scale, -scale).astype(np.float32)


def sign_decode(r: enc.Reader, n: int) -> np.ndarray:
    scale = r.floats(1, "float32", "sign scale")[0]
    if scale < 0:
        raise PayloadError("out-of-range", "compressed sign scale < 0")
    bits = enc.read_codes(r, n, 1, "signs")
    return np.where(bits == 1, scale, -scale).astype(np.float32)


def orthonormal(p: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning p's (Vogels et al. use Gram-Schmidt; QR gives the same span)."""
    q, _ = np.linalg.qr(p.astype(np.float64))
    return q.astype(np.float32)


def powersgd_encode(m: np.ndarray, q: np.ndarray, values: str) -> tuple[bytes, np.ndarray]:
    """One warm-started power iteration: (encoding of P then Q, the new Q). ``q`` is (cols x r)."""
    p = orthonormal(m @ q)
    q_new = (m.T @ p).astype(np.float32)
    return enc.float_bytes(p, values) + enc.float_bytes(q_new, values), q_new


def powersgd_decode(r: enc.Reader, m: int, c: int, rank: int, values: str) -> np.ndarray:
    p = r.floats(m * rank, values, "powersgd P").reshape(m, rank)
    q = r.floats(c * rank, values, "powersgd Q").reshape(c, rank)
    out = p @ q.T
    if not np.isfinite(out).all():
        raise PayloadError("non-finite", "compressed powersgd product")
    return out


# --- a whole layout ---------------------------------------------------------------------------
class Codec:
    """Encodes the tensors of a layout ``[(key, shape), ...]`` into one byte string and back.

    ``encode`` also returns what the receiver will decode, so error feedback keeps exactly
    the part that was not delivered. ``state`` is the client's own dict (PowerSGD's Q).
    """

    def __init__(self, settings: Settings):
        if settings.method not in CODEC_IDS:
            raise ValueError(f"no codec {settings.method!r}")
        self.s = settings

    def encode(self, layout: list[tuple[str, tuple[int, ...]]], tensors: list[np.ndarray], rnd: int, cid: int, state: dict) -> tuple[bytes, list[np.ndarray]]:
        s = self.s
        parts = [bytes([CODEC_IDS[s.method]])]
        for (key, shape), x in zip(layout, tensors):
            x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
            n = x.size
            if s.method == "topk":
                data = topk_encode(x, keep_count(n, s.ratio), s.values) if n else b""
            elif s.method == "randk":
                k = keep_count(n, s.ratio) if n else 0
                idx = random_indices(s, rnd, cid, key, n, k)
                scale = 1.0 if s.error_feedback else n / max(k, 1)
                data = enc.float_bytes(x[idx] * scale, s.values)
            elif s.method == "qsgd":
                rng = np.random.default_rng(derive_seed(s.seed, "compress-qsgd", rnd, cid, key))
                data = qsgd_encode(x, s, rng)
            elif s.method == "sign":
                data, _ = sign_encode(x)
            else:
                lr = low_rank(shape, s.rank)
                if lr is None:
                    data = enc.float_bytes(x, "float32")
                else:
                    m, c, r = lr
                    q = state.get(key)
                    if q is None or tuple(q.shape) != (c, r):
                        g = generator(s.seed, "compress-powersgd-init", key)
                        q = torch.randn(c, r, generator=g).numpy()
                    data, q_new = powersgd_encode(x.reshape(m, c), np.asarray(q, dtype=np.float32), s.values)
                    state[key] = torch.from_numpy(q_new)
            parts.append(data)
        blob = b"".join(parts)
        # what the server will see, by the server's own decoder (float16 rounding included)
        decoded = self.decode(blob, layout, rnd, cid)
        return blob, decoded

    def decode(self, blob: bytes, layout: list[tuple[str, tuple[int, ...]]], rnd: int, cid: int) -> list[np.ndarray]:
        s = self.s
        r = enc.Reader(blob)
        codec = r.u8("codec id")
        if codec != CODEC_IDS[s.method]:
            raise PayloadError("bad-encoding", f"codec id {codec}, expected {CODEC_IDS[s.method]} ({s.method})")
        out = []
        for key, shape in layout:
            n = int(np.prod(shape)) if shape else 1
            if s.method == "topk":
                x = np.zeros(n, dtype=np.float32)
                if n:
                    idx, vals = sparse_decode(r, n, keep_count(n, s.ratio), s.values)
                    x[idx] = vals
            elif s.method == "randk":
                x = np.zeros(n, dtype=np.float32)
                k = keep_count(n, s.ratio) if n else 0
                x[random_indices(s, rnd, cid, key, n, k)] = r.floats(k, s.values, "randk values")
            elif s.method == "qsgd":
                x = qsgd_decode(r, n, s)
            elif s.method == "sign":
                x = sign_decode(r, n)
            else:
                lr = low_rank(shape, s.rank)
                x = r.floats(n, "float32", "dense tensor") if lr is None else powersgd_decode(r, *lr, s.values).reshape(-1)
            out.append(x.reshape(shape))
        r.done()
        return out
