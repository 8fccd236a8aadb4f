"""The primitives secure aggregation is built from: standard ones from a library made for them
(``cryptography``), and Shamir sharing over a prime field written out here in a few lines of
integer arithmetic (so a round's secrets are rebuilt together, not one library call each).

- Key agreement: X25519, the shared secret stretched by HKDF-SHA256 with a context string (run,
  round, pair, purpose), so keys never repeat across rounds or uses.
- Authenticated encryption of the Shamir shares: ChaCha20-Poly1305, one sealed message per
  neighbour carrying both shares; the header (sender, receiver, run, round) is associated data,
  authenticated but not sent.
- Shamir secret sharing over GF(2^127 - 1): 16-byte shares of 127-bit seeds.
- Mask generator: AES-256 in counter mode keyed by a 32-byte key, read as little-endian words: a
  standard PRG, identical on every party for the same key.
- Fixed-point encoding into Z_{2^b}, b = 8, 16, 32 or 64 (``secagg.ring_bits``; numpy's unsigned
  arithmetic wraps modulo 2^b by definition): a real value x becomes round(x * 2^f) in two's
  complement.
"""

from __future__ import annotations

import hashlib
import math
import operator
import os

import numpy as np

KEY_BYTES = 32


def random_bytes(n: int) -> bytes:
    """Every secret of the protocol comes from here: the operating system's CSPRNG."""
    return os.urandom(n)


# --- keys ---------------------------------------------------------------------------------------


def keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw bytes (secret, public)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    sk = X25519PrivateKey.from_private_bytes(random_bytes(KEY_BYTES))
    return _raw_secret(sk), _raw_public(sk)


def public_of(secret: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return _raw_public(X25519PrivateKey.from_private_bytes(secret))


def _raw_secret(sk) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def _raw_public(sk) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


_X25519_P = 2**255 - 19
#: u-coordinates (mod p) of the points of order dividing 8 on Curve25519 and its twist: 0 (order 2),
#: 1 and p - 1 (order 4), and the two of order 8 (RFC 7748, section 6.1 asks to refuse them)
_LOW_ORDER = frozenset(
    {
        0,
        1,
        _X25519_P - 1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
    }
)


def valid_public(public: bytes) -> bool:
    """Whether a 32-byte X25519 public key yields a usable (non-zero) shared secret: a point of
    order dividing 8 gives an all-zero secret with every clamped key (a multiple of 8). X25519 ignores
    the top bit and reduces u mod p, so the check does too (a lookup, not a scalar multiplication)."""
    if len(public) != KEY_BYTES:
        return False
    u = int.from_bytes(public, "little") & ((1 << 255) - 1)
    return u % _X25519_P not in _LOW_ORDER


def agree(secret: bytes, public: bytes, context: bytes) -> bytes:
    """32 bytes both ends of an X25519 pair derive; ``context`` binds them to a run, round and use."""
    return agree_many(secret, [public], [context])[0]


def agree_many(secret: bytes, publics: list[bytes], contexts: list[bytes]) -> list[bytes]:
    """:func:`agree` of one secret key with many public keys (the key object is built once)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    sk = X25519PrivateKey.from_private_bytes(secret)
    out = []
    for public, context in zip(publics, contexts):
        shared = sk.exchange(X25519PublicKey.from_public_bytes(public))
        out.append(HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=context).derive(shared))
    return out


# --- authenticated encryption -----------------------------------------------------------------------

AEAD_TAG_BYTES = 16


def seal(key: bytes, nonce: bytes, associated: bytes, plaintext: bytes) -> bytes:
    """ChaCha20-Poly1305: the ciphertext and its 16-byte tag. ``associated`` (who sends to whom, in
    which run and round) is authenticated without travelling: both ends know it."""
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    return ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, nonce: bytes, associated: bytes, token: bytes) -> bytes:
    """Raises ``ValueError`` when the token was not sealed with ``key`` and ``associated``, or was altered."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    try:
        return ChaCha20Poly1305(key).decrypt(nonce, bytes(token), associated)
    except (InvalidTag, ValueError, TypeError):
        raise ValueError("share ciphertext does not authenticate") from None


# --- Shamir sharing over GF(2^127 - 1) ----------------------------------------------------------------
#
# The protocol's two secrets per client (the self-mask seed b and the seed of the mask key s) are
# uniform elements of the prime field GF(P), P = 2^127 - 1: 127 bits, the security level of the rest
# of the protocol (X25519 and AES give about 128). A share is one field element (16 bytes) at the
# point x = the holder's position in the sender's neighbour list (1..k), which the server assigned and
# knows, so the point never travels (Shamir 1979; Bonawitz et al. 2017, section 3).

FIELD_PRIME = 2**127 - 1
SECRET_BYTES = 16


def random_element() -> int:
    """A uniform element of GF(P) from the CSPRNG (127 random bits; the one value P is redrawn)."""
    while True:
        x = int.from_bytes(random_bytes(SECRET_BYTES), "little") & FIELD_PRIME
        if x != FIELD_PRIME:
            return x


def element_bytes(x: int) -> bytes:
    return x.to_bytes(SECRET_BYTES, "little")


def element_of(data: bytes) -> int | None:
    """The field element a 16-byte share encodes, or None when it encodes none (a value >= P)."""
    x = int.from_bytes(data, "little")
    return x if len(data) == SECRET_BYTES and x < FIELD_PRIME else None


def share_many(secrets: list[int], threshold: int, num: int) -> list[list[int]]:
    """t-of-``num`` Shamir shares of each secret: ``out[i][j]`` is the share of secret j for holder
    i + 1, the value at x = i + 1 of a random polynomial of degree t - 1 whose constant term is the
    secret."""
    polys = [[s] + [random_element() for _ in range(threshold - 1)] for s in secrets]
    p = FIELD_PRIME
    return [[sum(map(operator.mul, coeffs, powers)) % p for coeffs in polys] for powers in _powers(threshold, num)]


_POWERS: dict[tuple[int, int], list[list[int]]] = {}


def _powers(threshold: int, num: int) -> list[list[int]]:
    """x^0 .. x^(t-1) mod P for x = 1..num (the Vandermonde rows every client of a round shares):
    a share is then one dot product, reduced once."""
    got = _POWERS.get((threshold, num))
    if got is None:
        got = [[pow(x, j, FIELD_PRIME) for j in range(threshold)] for x in range(1, num + 1)]
        if len(_POWERS) > 64:
            _POWERS.clear()
        _POWERS[(threshold, num)] = got
    return got


_LAGRANGE: dict[tuple[int, ...], tuple[int, ...]] = {}


def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients l_i with f(0) = sum_i l_i f(x_i) for every polynomial f of degree < len(xs).

    They depend only on which points (holders) answered, so they are computed once per holder set and
    reused for every secret rebuilt from that set: with no dropouts every secret of a round shares one
    set, and a round's reconstruction is one matrix-vector product per set."""
    got = _LAGRANGE.get(xs)
    if got is None:
        p = FIELD_PRIME
        out = []
        for i, xi in enumerate(xs):
            num, den = 1, 1
            for j, xj in enumerate(xs):
                if j != i:
                    num = num * xj % p
                    den = den * (xj - xi) % p
            out.append(num * pow(den, -1, p) % p)
        got = tuple(out)
        if len(_LAGRANGE) > 4096:
            _LAGRANGE.clear()
        _LAGRANGE[xs] = got
    return got


def combine_many(groups: list[tuple[tuple[int, ...], list[int]]]) -> list[int]:
    """Rebuild many secrets at once: each group is (points x_i, values y_i) of one secret, the points
    distinct and in 1..P-1. The interpolant through all given shares is evaluated at 0, so with more
    than t shares a single wrong one changes the result (its coefficient is never 0)."""
    p = FIELD_PRIME
    out = []
    for xs, ys in groups:
        lam = lagrange_at_zero(xs)
        out.append(sum(map(operator.mul, lam, ys)) % p)
    return out


def self_mask_key(seed: int) -> bytes:
    """The AES-256 key of a client's self-mask PRG(b), from its 127-bit seed b."""
    return hashlib.sha256(b"featherfl-secagg/self-mask" + element_bytes(seed)).digest()


def mask_secret(seed: int) -> bytes:
    """A client's X25519 mask secret key, from its 127-bit seed (the seed is what is shared)."""
    return hashlib.sha256(b"featherfl-secagg/mask-key" + element_bytes(seed)).digest()


def commit(seed: int) -> bytes:
    """16-byte SHA-256 commitment to a self-mask seed: lets the server check a reconstruction (a
    wrong share would have to hit a 128-bit second preimage to pass)."""
    return hashlib.sha256(b"featherfl-secagg-commit" + element_bytes(seed)).digest()[:COMMIT_BYTES]


COMMIT_BYTES = 16


# --- masks and fixed point -------------------------------------------------------------------------


RINGS = {8: (np.uint8, np.int8), 16: (np.uint16, np.int16), 32: (np.uint32, np.int32), 64: (np.uint64, np.int64)}


def prg(seed: bytes, n: int, bits: int = 64) -> np.ndarray:
    """n words of ``bits`` bits (8, 16, 32 or 64) of AES-256-CTR keystream under ``seed`` (32 bytes)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    unsigned = RINGS[bits][0]
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    raw = enc.update(bytes(bits // 8 * n)) + enc.finalize()
    return np.frombuffer(raw, dtype=np.dtype(unsigned).newbyteorder("<")).astype(unsigned, copy=False)


def keystream_sum(keys: list[bytes], n: int, bits: int = 64, chunk_bytes: int = 1 << 25) -> np.ndarray:
    """sum_i PRG(keys[i]) in Z_{2^bits}: the keystreams are written into one buffer, a block of keys
    at a time (at most ``chunk_bytes``), and summed in one pass per block."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    unsigned = RINGS[bits][0]
    width = bits // 8 * n
    rows = max(1, min(len(keys), chunk_bytes // max(1, width)))
    buf = bytearray(rows * width + 15)  # update_into wants room for a block beyond the output
    view = np.frombuffer(buf, dtype=np.uint8)[: rows * width].view(np.dtype(unsigned).newbyteorder("<")).reshape(rows, n)
    zeros = bytes(width)
    total = np.zeros(n, dtype=unsigned)
    for start in range(0, len(keys), rows):
        block = keys[start : start + rows]
        for i, key in enumerate(block):
            enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
            enc.update_into(zeros, memoryview(buf)[i * width : (i + 1) * width + 15])
        total += view[: len(block)].sum(axis=0, dtype=unsigned)
    return total


def negate(words: np.ndarray) -> np.ndarray:
    """-words in the ring (unsigned numpy arithmetic wraps modulo 2^bits)."""
    return words.dtype.type(0) - words


def encode_fixed(x: np.ndarray, fraction_bits: int, bound: float, bits: int = 64) -> tuple[np.ndarray, int]:
    """Clip ``x`` to [-bound, bound], round to multiples of 2^-f, map into Z_{2^bits}.

    Returns the encoded words and how many values were clipped."""
    unsigned, signed = RINGS[bits]
    x = np.asarray(x, dtype=np.float64)
    clipped = int(np.count_nonzero(np.abs(x) > bound))
    q = np.rint(np.clip(x, -bound, bound) * float(2**fraction_bits)).astype(signed)
    return q.view(unsigned), clipped


def decode_fixed(words: np.ndarray, fraction_bits: int) -> np.ndarray:
    """Inverse of :func:`encode_fixed` for a sum that stayed inside the signed range."""
    signed = RINGS[words.dtype.itemsize * 8][1]
    return words.view(signed).astype(np.float64) / float(2**fraction_bits)


def bound_for(participants: int, fraction_bits: int, bits: int = 64) -> float:
    """The largest |value| a client may encode so the sum of ``participants`` values cannot wrap."""
    return float(2 ** (bits - 1 - fraction_bits)) / max(1, participants) * 0.999


def words_for(participants: int, max_abs: float, resolution: float, max_count: int = 0, rings: tuple[int, ...] = (8, 16, 32, 64)) -> tuple[int, int]:
    """(ring bits, fraction bits): the smallest ring of ``rings`` whose words hold ``participants``
    values of at most ``max_abs`` each with a step of at most ``resolution``, and beside them
    counts of at most ``max_count`` each (counts travel as whole numbers, one step each).

    The step is 2^-f with f = ceil(log2(1 / resolution)); a ring of b bits keeps f <= b - 8 and
    holds the sum of n values while n x max_abs <= 2^(b-1-f) (``bound_for``). Raises
    ``ValueError`` naming what does not fit when no ring does: the check that refuses a declared
    range and precision the largest ring cannot carry."""
    if max_abs <= 0 or resolution <= 0:
        raise ValueError("the declared range and resolution must be positive")
    f = max(0, math.ceil(-math.log2(resolution) - 1e-12))
    for bits in rings:
        if fits(participants, max_abs, f, bits, max_count):
            return bits, f
    raise ValueError(f"{participants} values of up to {max_abs:g} at a step of {resolution:g} need more than {max(rings)}-bit words")


def fits(participants: int, max_abs: float, fraction_bits: int, bits: int, max_count: int = 0) -> bool:
    """Whether ``participants`` values of at most ``max_abs`` (and counts of at most ``max_count``)
    sum without wrapping in b-bit words with f fraction bits."""
    bound = bound_for(participants, fraction_bits, bits)
    return fraction_bits <= bits - 8 and max_abs <= bound and max_count * 2.0**-fraction_bits <= bound
