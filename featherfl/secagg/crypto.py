"""The primitives secure aggregation is built from, each a standard one from a library made
for it; nothing here is a new cipher.

- Key agreement: X25519 (``cryptography``), the shared secret stretched by HKDF-SHA256 with
  a context string (run, round, purpose), so keys never repeat across rounds or uses.
- Authenticated encryption of the Shamir shares: Fernet (AES-128-CBC + HMAC-SHA256), through
  Flower's ``flwr.common.secure_aggregation.crypto.symmetric_encryption``.
- Shamir secret sharing over GF(2^128): Flower's ``crypto.shamir`` (pycryptodome).
- Mask generator: AES-256 in counter mode keyed by a 32-byte seed, read as little-endian
  uint64 words: a standard PRG, identical on every party for the same seed.
- Fixed-point encoding into Z_{2^b}, b = 32 or 64 (``secagg.ring_bits``; numpy's unsigned
  arithmetic wraps modulo 2^b by definition): a real value x becomes round(x * 2^f) in two's
  complement.
"""

from __future__ import annotations

import base64
import hashlib
import os

import numpy as np

KEY_BYTES = 32


def random_bytes(n: int) -> bytes:
    """Every secret of the protocol comes from here: the operating system's CSPRNG."""
    return os.urandom(n)


def _flwr_crypto():
    try:
        from flwr.common.secure_aggregation.crypto import shamir, symmetric_encryption
    except ImportError:  # checked at config time too (``featherfl.secagg.validate``)
        raise ImportError("secure aggregation needs the secagg extra: pip install 'featherfl[secagg]'") from None
    return shamir, symmetric_encryption


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


def valid_public(public: bytes) -> bool:
    """Whether a 32-byte X25519 public key yields a usable (non-zero) shared secret."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    try:
        X25519PrivateKey.from_private_bytes(hashlib.sha256(b"featherfl-key-check").digest()).exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # low-order points give an all-zero secret
        return False
    return True


def agree(secret: bytes, public: bytes, context: bytes) -> bytes:
    """32 bytes both ends of an X25519 pair derive; ``context`` binds them to a run, round and use."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    shared = X25519PrivateKey.from_private_bytes(secret).exchange(X25519PublicKey.from_public_bytes(public))
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=context).derive(shared)


def commit(secret: bytes) -> bytes:
    """SHA-256 commitment to a random 32-byte seed (lets the server check a reconstruction)."""
    return hashlib.sha256(b"featherfl-secagg-commit" + secret).digest()


# --- encryption and sharing (Flower's building blocks) -------------------------------------------


def encrypt(key: bytes, plaintext: bytes) -> bytes:
    """Fernet token, base64-decoded to raw bytes for the wire."""
    _, sym = _flwr_crypto()
    return base64.urlsafe_b64decode(sym.encrypt(base64.urlsafe_b64encode(key), plaintext))


def decrypt(key: bytes, token: bytes) -> bytes:
    """Raises ``ValueError`` when the token was not made with ``key`` or was altered."""
    from cryptography.fernet import InvalidToken

    _, sym = _flwr_crypto()
    try:
        return sym.decrypt(base64.urlsafe_b64encode(key), base64.urlsafe_b64encode(bytes(token)))
    except (InvalidToken, ValueError, TypeError):
        raise ValueError("share ciphertext does not authenticate") from None


def share(secret: bytes, threshold: int, num: int) -> list[bytes]:
    shamir, _ = _flwr_crypto()
    return shamir.create_shares(secret, threshold, num)


def combine(shares: list[bytes]) -> bytes | None:
    """The secret from shares, or None when they do not combine (a wrong or malformed share)."""
    shamir, _ = _flwr_crypto()
    try:
        return shamir.combine_shares([bytes(s) for s in shares])
    except (ValueError, IndexError, TypeError):
        return None


# --- masks and fixed point -------------------------------------------------------------------------


RINGS = {32: (np.uint32, np.int32), 64: (np.uint64, np.int64)}


def prg(seed: bytes, n: int, bits: int = 64) -> np.ndarray:
    """n words of ``bits`` bits (32 or 64) of AES-256-CTR keystream under ``seed`` (32 bytes)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    unsigned = RINGS[bits][0]
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    raw = enc.update(bytes(bits // 8 * n)) + enc.finalize()
    return np.frombuffer(raw, dtype=np.dtype(unsigned).newbyteorder("<")).astype(unsigned, copy=False)


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


def error_bound(participants: int, fraction_bits: int) -> float:
    """Largest difference between the decoded sum and the true sum of in-range values:
    each client's rounding is at most half a step, 2^-(f+1)."""
    return participants * 2.0 ** -(fraction_bits + 1)
