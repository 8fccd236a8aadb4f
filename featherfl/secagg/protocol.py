"""SecAgg+ (Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead"; Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning"): the server learns the sum of the participants' vectors and nothing else about any
single one, for an honest-but-curious server and up to a stated share of dropped clients.

One round, as exchanges the engine runs (every message through the wire codec, counted):

  advertise  server -> u in U1 (sampled): u's neighbours in a k-regular graph, threshold t.
             u -> server: two X25519 public keys (c: encryption, s: masks) and a SHA-256
             commitment to a fresh 32-byte self-mask seed b_u.
  keys       server -> u: its neighbours' public keys and commitments.
             u -> server: for each neighbour v, Enc(KA(c_u, c_v); u, v, round, share_v(s_u),
             share_v(b_u)): t-of-k Shamir shares of its mask secret key and self-mask seed.
  train      server -> u in U2 (sent shares): the method's downlink in an envelope with u's
             neighbours in U2. u trains, encodes its vector in fixed point in Z_{2^64}, and sends
             y_u = x_u + PRG(b_u) + sum_{v in N(u) cap U2} sign(u, v) PRG(KA(s_u, s_v))
             (sign +1 if u < v, else -1): uniformly distributed to anyone without the seeds.
  unmask     server -> u in U3 (masked input accepted): which neighbours survived and which
             dropped since sharing, and the share ciphertexts addressed to u. u reveals b-shares
             of survivors and s-shares of the dropped, never both for one neighbour, at most once.
  server     rebuilds b_v (t shares; checked against the commitment) of every survivor and
             s_v (checked against the public key) of every dropped client, removes
             PRG(b_v) and the dropped clients' pairwise masks, and decodes the sum.

A wrong share is detected (the reconstruction fails its commitment or public key); the
server then looks for a consistent set of t shares, names the client whose share does
not fit, and still unmasks when enough honest shares remain. Fewer than t usable shares for
any client's secret: the round is skipped with the reason.
"""

from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass, field

import numpy as np
import torch

from featherfl.secagg import crypto
from featherfl.wire import Payload, ScalarSpec, Spec, TensorSpec

MAX_CLIENTS = 2**31 - 1
SHARE_BYTES = 52  # Flower's Shamir share of a 32-byte secret: 4-byte index + 3 x 16-byte chunks
_PLAIN = struct.Struct("<III")  # sender, receiver, round
PLAINTEXT_BYTES = _PLAIN.size + 2 * SHARE_BYTES
TOKEN_BYTES = 1 + 8 + 16 + 16 * (PLAINTEXT_BYTES // 16 + 1) + 32  # Fernet: version, time, IV, CBC body, HMAC


# --- payloads --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdvertiseDown(Payload):
    KIND = "secagg.advertise"
    CATEGORY = "secagg"
    neighbours: list
    threshold: int


@dataclass(frozen=True)
class KeysUp(Payload):
    KIND = "secagg.keys-up"
    CATEGORY = "secagg"
    c_pk: torch.Tensor  # uint8 (32,)
    s_pk: torch.Tensor  # uint8 (32,)
    commit: torch.Tensor  # uint8 (32,)


@dataclass(frozen=True)
class KeysDown(Payload):
    KIND = "secagg.keys"
    CATEGORY = "secagg"
    ids: list
    c_pk: torch.Tensor  # uint8 (m, 32)
    s_pk: torch.Tensor  # uint8 (m, 32)
    commit: torch.Tensor  # uint8 (m, 32)


@dataclass(frozen=True)
class SharesUp(Payload):
    KIND = "secagg.shares"
    CATEGORY = "secagg"
    to: list
    tokens: torch.Tensor  # uint8 (m, TOKEN_BYTES)


@dataclass(frozen=True)
class Envelope(Payload):
    """The method's own downlink (encoded, validated by the client against the method's specs)
    plus the round's masking set. The ledger counts the inner payload under its own category."""

    KIND = "secagg.envelope"
    CATEGORY = "secagg"
    inner: torch.Tensor  # uint8: wire bytes of the method's downlink
    inner_category: str
    neighbours: list
    participants: int

    def ledger_parts(self, size: int) -> list[tuple[str, int]]:
        n = int(self.inner.numel())
        return [(self.inner_category, n), ("secagg", size - n)]


@dataclass(frozen=True)
class MaskedUp(Payload):
    KIND = "secagg.masked"
    CATEGORY = "secagg"
    y: torch.Tensor  # int64 (d,) or int32 (d,): ring words, bit-reinterpreted
    clear: list  # public per-client numbers the method needs (e.g. a DP epsilon); may be empty


@dataclass(frozen=True)
class UnmaskDown(Payload):
    KIND = "secagg.unmask"
    CATEGORY = "secagg"
    survivors: list
    dropped: list
    senders: list
    tokens: torch.Tensor  # uint8 (len(senders), TOKEN_BYTES)


@dataclass(frozen=True)
class RevealUp(Payload):
    KIND = "secagg.reveal"
    CATEGORY = "secagg"
    b_ids: list
    b_shares: torch.Tensor  # uint8 (len(b_ids), SHARE_BYTES)
    s_ids: list
    s_shares: torch.Tensor  # uint8 (len(s_ids), SHARE_BYTES)


def _key(m: int | None = None) -> TensorSpec:
    """32-byte keys: one (``m`` None), a list of any length (``m`` -1) or of exactly ``m``."""
    if m is None:
        return TensorSpec("uint8", (32,))
    return TensorSpec("uint8", (None if m < 0 else m, 32))


def _ids(max_len: int) -> ScalarSpec:
    return ScalarSpec("list[int]", 0, MAX_CLIENTS, max_len=max_len)


def client_specs(inner_specs: dict[str, Spec]) -> dict[str, Spec]:
    """What a client accepts from the server (beside the method's own downlinks)."""
    big = 1 << 20
    return {
        AdvertiseDown.KIND: Spec(AdvertiseDown, {}, {"neighbours": _ids(big), "threshold": ScalarSpec("int", 2, MAX_CLIENTS)}),
        KeysDown.KIND: Spec(KeysDown, {"c_pk": _key(-1), "s_pk": _key(-1), "commit": _key(-1)}, {"ids": _ids(big)}),
        Envelope.KIND: Spec(
            Envelope,
            {"inner": TensorSpec("uint8", (None,), max_elems=2**31)},
            {"inner_category": ScalarSpec("str", max_len=64), "neighbours": _ids(big), "participants": ScalarSpec("int", 1, MAX_CLIENTS)},
        ),
        UnmaskDown.KIND: Spec(UnmaskDown, {"tokens": TensorSpec("uint8", (None, TOKEN_BYTES))}, {"survivors": _ids(big), "dropped": _ids(big), "senders": _ids(big)}),
    }


def keys_up_spec() -> dict[str, Spec]:
    return {KeysUp.KIND: Spec(KeysUp, {"c_pk": _key(), "s_pk": _key(), "commit": _key()})}


def shares_up_spec(m: int) -> dict[str, Spec]:
    return {SharesUp.KIND: Spec(SharesUp, {"tokens": TensorSpec("uint8", (m, TOKEN_BYTES))}, {"to": _ids(m)})}


def masked_up_spec(dim: int, clear: int, bits: int = 64) -> dict[str, Spec]:
    return {MaskedUp.KIND: Spec(MaskedUp, {"y": TensorSpec(f"int{bits}", (dim,), max_elems=max(dim, 1))}, {"clear": ScalarSpec("list[float]", -1e12, 1e12, max_len=clear)})}


def reveal_up_spec(m: int) -> dict[str, Spec]:
    return {RevealUp.KIND: Spec(RevealUp, {"b_shares": TensorSpec("uint8", (None, SHARE_BYTES)), "s_shares": TensorSpec("uint8", (None, SHARE_BYTES))}, {"b_ids": _ids(m), "s_ids": _ids(m)})}


def _b(t: torch.Tensor) -> bytes:
    return bytes(t.numpy().tobytes())


def _t(b: bytes | list[bytes], width: int) -> torch.Tensor:
    if isinstance(b, bytes):
        return torch.frombuffer(bytearray(b), dtype=torch.uint8).clone()
    if not b:
        return torch.zeros(0, width, dtype=torch.uint8)
    return torch.frombuffer(bytearray(b"".join(b)), dtype=torch.uint8).view(len(b), width).clone()


# --- the neighbour graph and threshold ---------------------------------------------------------------


def neighbour_count(n: int, configured: int) -> int:
    """k: every client's number of neighbours. 0 = automatic: everyone for small rounds, else
    O(log n) as SecAgg+ prescribes (at least 16, 4 log2 n), made even for the ring construction."""
    if n <= 1:
        return 0
    k = configured or max(16, 4 * math.ceil(math.log2(n)))
    if k >= n - 1:
        return n - 1
    return k + (k % 2)


def threshold_for(k: int, share: float) -> int:
    """t: shares needed to rebuild a secret; more than half of k, so the server can never hold
    both a client's self-mask shares and its mask-key shares from honest neighbours."""
    return max(2, min(k, math.floor(share * k) + 1))


def neighbour_graph(clients: list[int], k: int, seed: int) -> dict[int, list[int]]:
    """A k-regular graph (a Harary ring over a seeded random order; complete when k = n - 1)."""
    order = list(clients)
    random.Random(seed).shuffle(order)
    n = len(order)
    if k >= n - 1:
        return {c: sorted(x for x in clients if x != c) for c in clients}
    half = k // 2
    out: dict[int, set[int]] = {c: set() for c in clients}
    for i, c in enumerate(order):
        for d in range(1, half + 1):
            v = order[(i + d) % n]
            out[c].add(v)
            out[v].add(c)
    return {c: sorted(s) for c, s in out.items()}


def mask_context(run: int, rnd: int, u: int, v: int) -> bytes:
    a, b = min(u, v), max(u, v)
    return f"featherfl-secagg/mask/{run}/{rnd}/{a}/{b}".encode()


def enc_context(run: int, rnd: int, u: int, v: int) -> bytes:
    a, b = min(u, v), max(u, v)
    return f"featherfl-secagg/enc/{run}/{rnd}/{a}/{b}".encode()


def pair_mask(s_secret: bytes, s_public_other: bytes, run: int, rnd: int, me: int, other: int, n: int, bits: int) -> np.ndarray:
    """sign(me, other) * PRG(KA(s_me, s_other)): the mask ``me`` adds for neighbour ``other``.
    Either end's secret key with the other's public key gives it (X25519 agreement)."""
    m = crypto.prg(crypto.agree(s_secret, s_public_other, mask_context(run, rnd, me, other)), n, bits)
    return m if me < other else crypto.negate(m)


class ProtocolError(ValueError):
    """A message that breaks the protocol (the client refuses it; the engine counts the error)."""


# --- client side -----------------------------------------------------------------------------------


class ClientSession:
    """One client's protocol state for one round, kept in the client's persistent ``state``
    (plain bytes and ints) between the round's messages, and dropped when the round ends."""

    KEY = "secagg"

    def __init__(self, state: dict, run: int):
        self.state = state
        self.run = run

    def _round(self, rnd: int) -> dict:
        s = self.state.get(self.KEY)
        if not s or s.get("round") != rnd:
            raise ProtocolError(f"no secure-aggregation session for round {rnd}")
        return s

    def advertise(self, rnd: int, cid: int, msg: AdvertiseDown) -> KeysUp:
        nb = list(msg.neighbours)
        if cid in nb or len(set(nb)) != len(nb):
            raise ProtocolError("neighbour list names this client or repeats a client")
        if msg.threshold > len(nb) or msg.threshold < 2:
            raise ProtocolError(f"threshold {msg.threshold} impossible with {len(nb)} neighbours")
        if 2 * msg.threshold <= len(nb):
            raise ProtocolError(f"threshold {msg.threshold} is not above half of {len(nb)} neighbours")
        c_sk, c_pk = crypto.keypair()
        s_sk, s_pk = crypto.keypair()
        b = crypto.random_bytes(crypto.KEY_BYTES)
        self.state[self.KEY] = {"round": rnd, "cid": cid, "neighbours": nb, "t": msg.threshold, "c_sk": c_sk, "s_sk": s_sk, "b": b, "stage": "advertised"}
        return KeysUp(_t(c_pk, 32), _t(s_pk, 32), _t(crypto.commit(b), 32))

    def keys(self, rnd: int, msg: KeysDown) -> SharesUp:
        s = self._round(rnd)
        if s["stage"] != "advertised":
            raise ProtocolError("keys sent twice")
        ids = list(msg.ids)
        if len(set(ids)) != len(ids) or not set(ids) <= set(s["neighbours"]):
            raise ProtocolError("keys for clients that are not this client's neighbours")
        if len(ids) < s["t"]:
            raise ProtocolError(f"{len(ids)} neighbours left, fewer than the threshold {s['t']}")
        c_pks = [_b(msg.c_pk[i]) for i in range(len(ids))]
        s_pks = [_b(msg.s_pk[i]) for i in range(len(ids))]
        if len(set(c_pks)) != len(c_pks) or len(set(s_pks)) != len(s_pks):
            raise ProtocolError("two neighbours with the same public key")
        s_shares = crypto.share(s["s_sk"], s["t"], len(ids))
        b_shares = crypto.share(s["b"], s["t"], len(ids))
        me = s["cid"]
        tokens = []
        for i, v in enumerate(ids):
            key = crypto.agree(s["c_sk"], c_pks[i], enc_context(self.run, rnd, me, v))
            tokens.append(crypto.encrypt(key, _PLAIN.pack(me, v, rnd) + s_shares[i] + b_shares[i]))
        s.update(stage="shared", ids=ids, c_pks=c_pks, s_pks=s_pks)
        return SharesUp(ids, _t(tokens, TOKEN_BYTES))

    def mask(self, rnd: int, msg: Envelope, x: np.ndarray, fraction_bits: int, bits: int = 64) -> tuple[np.ndarray, int]:
        """y = encode(x) + PRG(b) + pairwise masks with the neighbours in U2; returns (y, clipped)."""
        s = self._round(rnd)
        if s["stage"] != "shared":
            raise ProtocolError("masked input asked before the key exchange or twice")
        u2 = list(msg.neighbours)
        if not set(u2) <= set(s["ids"]) or len(set(u2)) != len(u2):
            raise ProtocolError("masking set names clients this client has no keys for")
        bound = crypto.bound_for(msg.participants, fraction_bits, bits)
        words, clipped = crypto.encode_fixed(x, fraction_bits, bound, bits)
        y = words + crypto.prg(s["b"], len(words), bits)
        idx = {v: i for i, v in enumerate(s["ids"])}
        for v in u2:
            y = y + pair_mask(s["s_sk"], s["s_pks"][idx[v]], self.run, rnd, s["cid"], v, len(words), bits)
        s.update(stage="masked", u2=u2)
        return y, clipped

    def unmask(self, rnd: int, msg: UnmaskDown) -> RevealUp:
        s = self._round(rnd)
        if s["stage"] != "masked":
            raise ProtocolError("unmasking asked before masking or twice")
        surv, drop = set(msg.survivors), set(msg.dropped)
        u2 = set(s["u2"])
        if surv & drop or not (surv | drop) <= u2 or len(surv) != len(msg.survivors) or len(drop) != len(msg.dropped):
            raise ProtocolError("survivor and dropped sets overlap or name clients outside the masking set")
        if len(surv) + 1 < s["t"]:
            raise ProtocolError(f"{len(surv) + 1} survivors, fewer than the threshold {s['t']}")
        idx = {v: i for i, v in enumerate(s["ids"])}
        me = s["cid"]
        b_ids, b_sh, s_ids, s_sh = [], [], [], []
        for j, v in enumerate(msg.senders):
            if v not in idx or (v not in surv and v not in drop):
                continue
            key = crypto.agree(s["c_sk"], s["c_pks"][idx[v]], enc_context(self.run, rnd, me, v))
            try:
                plain = crypto.decrypt(key, _b(msg.tokens[j]))
            except ValueError:
                continue  # not from v, or altered: nothing to reveal for v
            if len(plain) != PLAINTEXT_BYTES or _PLAIN.unpack_from(plain, 0) != (v, me, rnd):
                continue
            s_share = plain[_PLAIN.size : _PLAIN.size + SHARE_BYTES]
            b_share = plain[_PLAIN.size + SHARE_BYTES :]
            if v in surv:
                b_ids.append(v)
                b_sh.append(b_share)
            else:
                s_ids.append(v)
                s_sh.append(s_share)
        self.state.pop(self.KEY, None)  # at most one reveal per round; the round's secrets are gone
        return RevealUp(b_ids, _t(b_sh, SHARE_BYTES), s_ids, _t(s_sh, SHARE_BYTES))


# --- server side -----------------------------------------------------------------------------------


class Skip(RuntimeError):
    """The round cannot be unmasked; the message says why."""


@dataclass
class ServerRound:
    """The server's view of one round's protocol."""

    rnd: int
    run: int
    graph: dict[int, list[int]]
    t: int
    stage: str = "advertise"
    keys: dict[int, tuple[bytes, bytes, bytes]] = field(default_factory=dict)  # cid -> (c_pk, s_pk, commit)
    keys_sent: dict[int, list[int]] = field(default_factory=dict)
    tokens: dict[tuple[int, int], bytes] = field(default_factory=dict)  # (from, to) -> token
    u2: list[int] = field(default_factory=list)
    u3: list[int] = field(default_factory=list)
    unmask_sent: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)
    reveals: dict[int, RevealUp] = field(default_factory=dict)
    bad_share_clients: set = field(default_factory=set)

    # stage 1: advertise
    def advertise(self) -> dict[int, Payload]:
        return {c: AdvertiseDown(nb, self.t) for c, nb in self.graph.items()}

    def take_keys(self, replies: dict[int, KeysUp]) -> dict:
        seen: set[bytes] = set()
        rejected = 0
        for c in sorted(replies):
            r = replies[c]
            c_pk, s_pk, com = _b(r.c_pk), _b(r.s_pk), _b(r.commit)
            if c_pk in seen or s_pk in seen or c_pk == s_pk or not (crypto.valid_public(c_pk) and crypto.valid_public(s_pk)):
                rejected += 1  # a copied key would let one client speak for another; a low-order one breaks agreement
                continue
            seen.update((c_pk, s_pk))
            self.keys[c] = (c_pk, s_pk, com)
        self.stage = "keys"
        return {"secagg_keys_rejected": rejected} if rejected else {}

    # stage 2: keys -> shares
    def send_keys(self) -> dict[int, Payload]:
        out = {}
        for c in sorted(self.keys):
            ids = [v for v in self.graph[c] if v in self.keys]
            if len(ids) < self.t:
                continue
            self.keys_sent[c] = ids
            out[c] = KeysDown(ids, _t([self.keys[v][0] for v in ids], 32), _t([self.keys[v][1] for v in ids], 32), _t([self.keys[v][2] for v in ids], 32))
        return out

    def take_shares(self, replies: dict[int, SharesUp]) -> None:
        for c in sorted(replies):
            r = replies[c]
            if list(r.to) != self.keys_sent.get(c):
                continue
            for i, v in enumerate(r.to):
                self.tokens[(c, v)] = _b(r.tokens[i])
            self.u2.append(c)
        self.stage = "masked"

    def masking_set(self, c: int) -> list[int]:
        u2 = set(self.u2)
        return [v for v in self.graph[c] if v in u2]

    # stage 4: unmask
    def send_unmask(self, u3: list[int]) -> dict[int, Payload]:
        self.u3 = sorted(u3)
        s3 = set(self.u3)
        out = {}
        for c in self.u3:
            ms = self.masking_set(c)
            surv = [v for v in ms if v in s3]
            drop = [v for v in ms if v not in s3]
            senders = [v for v in ms if (v, c) in self.tokens]
            self.unmask_sent[c] = (surv, drop)
            out[c] = UnmaskDown(surv, drop, senders, _t([self.tokens[(v, c)] for v in senders], TOKEN_BYTES))
        self.stage = "reveal"
        return out

    def take_reveals(self, replies: dict[int, RevealUp]) -> None:
        for c in sorted(replies):
            r = replies[c]
            surv, drop = self.unmask_sent.get(c, ([], []))
            if (
                not set(r.b_ids) <= set(surv)
                or not set(r.s_ids) <= set(drop)
                or len(set(r.b_ids)) != len(r.b_ids)
                or len(set(r.s_ids)) != len(r.s_ids)
                or len(r.b_ids) != r.b_shares.shape[0]
                or len(r.s_ids) != r.s_shares.shape[0]
            ):
                continue  # not what was asked: none of this client's reveal is used
            self.reveals[c] = r
        self.stage = "done"

    def _shares_of(self, v: int, kind: str) -> list[tuple[int, bytes]]:
        """The shares of v's secret that its neighbours revealed. v made share i + 1 for the
        i-th client it was sent keys of; a share carrying another index is wrong (and named)."""
        order = {c: i + 1 for i, c in enumerate(self.keys_sent.get(v, []))}
        out = []
        for c, r in sorted(self.reveals.items()):
            ids, sh = (r.b_ids, r.b_shares) if kind == "b" else (r.s_ids, r.s_shares)
            for i, w in enumerate(ids):
                if w != v:
                    continue
                share = _b(sh[i])
                if int.from_bytes(share[:4], "little") != order.get(c):
                    self.bad_share_clients.add(c)
                    continue
                out.append((c, share))
        return out

    def _rebuild(self, v: int, kind: str, check) -> bytes:
        """Rebuild v's secret from the revealed shares; find and name wrong shares."""
        shares = self._shares_of(v, kind)
        what = "self-mask seed" if kind == "b" else "mask key"
        if len(shares) < self.t:
            raise Skip(f"client {v}'s {what} has {len(shares)} shares, fewer than the threshold {self.t} (too many clients dropped)")
        # All shares at once: honest shares lie on one polynomial of degree t - 1, so the
        # interpolant through all of them gives the secret; a single wrong share changes it.
        secret = crypto.combine([s for _, s in shares])
        if secret is not None and check(secret):
            return secret
        # Some share is wrong: find a consistent set of t shares, then test every other share.
        good = None
        rng = random.Random(v)
        candidates = [shares[: self.t]] + [rng.sample(shares, self.t) for _ in range(200)]
        for subset in candidates:
            sec = crypto.combine([s for _, s in subset])
            if sec is not None and check(sec):
                good = (subset, sec)
                break
        if good is None:
            raise Skip(f"client {v}'s {what} could not be rebuilt: no consistent set of {self.t} shares")
        subset, sec = good
        base = [s for _, s in subset[: self.t - 1]]
        in_subset = {c for c, _ in subset}
        for c, s in shares:
            if c in in_subset:
                continue
            got = crypto.combine(base + [s])
            if got is None or not check(got):
                self.bad_share_clients.add(c)
        return sec

    def unmask_sum(self, masked: dict[int, np.ndarray]) -> np.ndarray:
        """The sum of the survivors' encoded vectors (ring words)."""
        if set(masked) != set(self.u3):
            raise Skip("masked inputs do not match the survivors the unmasking step was run for")
        first = next(iter(masked.values()))
        n, bits = len(first), first.dtype.itemsize * 8
        total = np.zeros(n, dtype=first.dtype)
        for c in self.u3:
            total = total + masked[c]
        for v in self.u3:
            com = self.keys[v][2]
            b = self._rebuild(v, "b", lambda sec, com=com: len(sec) == crypto.KEY_BYTES and crypto.commit(sec) == com)
            total = total - crypto.prg(b, n, bits)
        s3 = set(self.u3)
        for v in self.u2:
            if v in s3:
                continue
            pk = self.keys[v][1]
            survivors = [u for u in self.masking_set(v) if u in s3]
            if not survivors:
                continue
            s_sk = self._rebuild(v, "s", lambda sec, pk=pk: len(sec) == crypto.KEY_BYTES and crypto.public_of(sec) == pk)
            for u in survivors:
                # what survivor u added for v, rebuilt from v's secret key and u's public key
                total = total - pair_mask(s_sk, self.keys[u][1], self.run, self.rnd, u, v, n, bits)
        return total
