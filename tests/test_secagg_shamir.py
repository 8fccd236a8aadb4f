"""The batched Shamir sharing, keystreams and byte counts under secure aggregation.

The field arithmetic is checked against an independent reference (exact rational Lagrange
interpolation) and against the library Shamir scheme the protocol used before (pycryptodome's,
through Flower): both rebuild the same secrets from their own shares, and both are thrown off by a
changed share, which the commitment check then catches.
"""

from __future__ import annotations

import random
from fractions import Fraction

import numpy as np
import pytest

from featherfl.secagg import crypto, protocol
from support import secagg_simulate as simulate

P = crypto.FIELD_PRIME


@pytest.fixture
def seeded(monkeypatch):
    rng = random.Random(99)
    monkeypatch.setattr(crypto, "random_bytes", lambda n: bytes(rng.getrandbits(8) for _ in range(n)))


def reference_at_zero(points: list[tuple[int, int]]) -> int:
    """f(0) of the interpolant through ``points``, by exact rational Lagrange arithmetic, reduced mod P
    at the end (no cached coefficients, no modular inverses until the last step)."""
    total = Fraction(0)
    for i, (xi, yi) in enumerate(points):
        term = Fraction(yi)
        for j, (xj, _) in enumerate(points):
            if j != i:
                term *= Fraction(xj, xj - xi)
        total += term
    return total.numerator * pow(total.denominator, -1, P) % P


def test_batched_rebuild_matches_the_reference_for_every_holder_set(seeded):
    rng = random.Random(0)
    t, k = 5, 9
    secrets = [crypto.random_element() for _ in range(40)]
    shares = crypto.share_many(secrets, t, k)  # shares[i][j]: holder i + 1, secret j
    groups, expected = [], []
    for j, s in enumerate(secrets):
        holders = sorted(rng.sample(range(1, k + 1), rng.randint(t, k)))  # any t or more holders
        ys = [shares[x - 1][j] for x in holders]
        groups.append((tuple(holders), ys))
        assert reference_at_zero(list(zip(holders, ys))) == s
        expected.append(s)
    assert crypto.combine_many(groups) == expected


def test_fewer_than_t_shares_reveal_nothing_about_the_secret(seeded):
    """t - 1 shares fit every secret equally well: the same t - 1 shares interpolate, with any
    value at one more point, to secrets spread over the field."""
    t, k = 4, 6
    shares = crypto.share_many([12345], t, k)
    known = [(x, shares[x - 1][0]) for x in (1, 2, 3)]
    rebuilt = {reference_at_zero(known + [(5, y)]) for y in range(50)}
    assert len(rebuilt) == 50 and 12345 not in rebuilt


def test_the_same_secrets_are_rebuilt_as_by_the_library_scheme_and_tampering_throws_both_off(seeded):
    shamir = pytest.importorskip("flwr.common.secure_aggregation.crypto.shamir")
    t, k = 6, 10
    for trial in range(5):
        seed = crypto.random_element()
        raw = crypto.element_bytes(seed)
        old = shamir.create_shares(raw, t, k)
        new = crypto.share_many([seed], t, k)
        assert shamir.combine_shares(old) == raw
        assert crypto.combine_many([(tuple(range(1, k + 1)), [row[0] for row in new])]) == [seed]
        # one share altered: both schemes rebuild something else, and the commitment says so
        bad_old = list(old)
        bad_old[trial] = bad_old[trial][:10] + bytes([bad_old[trial][10] ^ 0x55]) + bad_old[trial][11:]
        try:
            got_old = shamir.combine_shares(bad_old)
        except ValueError:
            got_old = None
        assert got_old != raw
        ys = [row[0] for row in new]
        ys[trial] = (ys[trial] + 1) % P
        got = crypto.combine_many([(tuple(range(1, k + 1)), ys)])[0]
        assert got != seed and crypto.commit(got) != crypto.commit(seed)


def test_lagrange_coefficients_are_cached_per_holder_set():
    a = crypto.lagrange_at_zero((1, 2, 3, 5))
    assert crypto.lagrange_at_zero((1, 2, 3, 5)) is a
    assert sum(a) % P == 1  # they interpolate the constant polynomial 1


def test_share_encoding_refuses_values_outside_the_field():
    assert crypto.element_of(crypto.element_bytes(P - 1)) == P - 1
    assert crypto.element_of(P.to_bytes(16, "little")) is None
    assert crypto.element_of(bytes(15)) is None


def test_keystream_sum_is_the_sum_of_the_keystreams():
    keys = [bytes([i]) * 32 for i in range(7)]
    for bits in (32, 64):
        expected = np.zeros(1001, dtype=crypto.RINGS[bits][0])
        for key in keys:
            expected = expected + crypto.prg(key, 1001, bits)
        assert np.array_equal(crypto.keystream_sum(keys, 1001, bits, chunk_bytes=3000), expected)  # blocks of 3 and 2 keys
        assert np.array_equal(crypto.keystream_sum(keys, 1001, bits), expected)


def test_a_sealed_share_message_opens_only_for_its_pair_direction_and_header():
    key = bytes(range(32))
    token = crypto.seal(key, b"\x01" + bytes(11), b"header", bytes(32))
    assert len(token) == protocol.TOKEN_BYTES and crypto.open_sealed(key, b"\x01" + bytes(11), b"header", token) == bytes(32)
    for nonce, header in ((b"\x02" + bytes(11), b"header"), (b"\x01" + bytes(11), b"headex")):
        with pytest.raises(ValueError):
            crypto.open_sealed(key, nonce, header, token)


@pytest.mark.parametrize("n,dim,bits", [(10, 111, 64), (60, 102, 32), (60, 5000, 32)])
def test_uplink_bytes_stay_near_the_protocols_lower_bound(seeded, n, dim, bits):
    """Every client's measured uplink (every message encoded) against 2 x 32 + 48 k + d w; the excess
    is the AEAD tags (16 k), the commitment, and a fixed header per message."""
    rng = np.random.default_rng(0)
    v = {c: rng.uniform(-1, 1, dim) for c in range(n)}
    out = simulate.run_round(v, neighbours=16, ring_bits=bits, fraction_bits=bits // 2)
    assert out.skipped is None
    k = len(out.server.graph[0])
    bound = protocol.lower_bound_up(k, dim, bits // 8)
    for c, up in out.bytes_up.items():
        excess = up - bound
        assert 16 * k + crypto.COMMIT_BYTES <= excess <= 16 * k + crypto.COMMIT_BYTES + 600, (c, up, bound)


def test_server_seconds_are_broken_down(seeded):
    v = {c: np.ones(20) for c in range(12)}
    out = simulate.run_round(v, drop_after_masking={3})
    assert out.skipped is None and set(out.server.seconds) == {"sum", "shamir", "check", "agree", "masks"}
    assert np.allclose(out.total, 12.0)


def test_the_low_order_key_check_agrees_with_a_key_exchange():
    """valid_public is a lookup; a real exchange is the reference: it fails exactly on low-order points."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    sk = X25519PrivateKey.from_private_bytes(bytes(range(32)))

    def exchange_works(pk: bytes) -> bool:
        try:
            sk.exchange(X25519PublicKey.from_public_bytes(pk))
        except ValueError:
            return False
        return True

    p = 2**255 - 19
    rng = random.Random(3)
    candidates = [u for base in crypto._LOW_ORDER for u in (base, base + p, base + 2**255, base + p + 2**255)]
    candidates += [rng.getrandbits(256) for _ in range(200)] + [2, 9, p - 2, p + 2]
    verdicts = []
    for u in candidates:
        pk = (u % 2**256).to_bytes(32, "little")
        verdicts.append(crypto.valid_public(pk))
        assert crypto.valid_public(pk) == exchange_works(pk), u
    assert verdicts.count(False) >= 10 and verdicts.count(True) >= 200


def test_32_bit_words_where_range_and_precision_allow_and_a_refusal_otherwise():
    assert crypto.words_for(100, 1.0, 1e-4) == (32, 14)  # 100 x 1 <= 2^(31-14)
    assert crypto.words_for(100, 2000.0, 1e-4) == (64, 14)  # 100 x 2000 > 2^17: 64-bit words
    assert crypto.words_for(1000, 32.0, 2**-16) == (32, 16)  # 32,000 <= 0.999 x 2^15
    assert crypto.words_for(1000, 33.0, 2**-16) == (64, 16)  # 33,000 > 2^15
    bits, f = crypto.words_for(300, 50.0, 1e-3)
    assert 50.0 <= crypto.bound_for(300, f, bits) and 2.0**-f <= 1e-3
    with pytest.raises(ValueError, match="more than 64-bit"):
        crypto.words_for(10**6, 1e9, 1e-9)
