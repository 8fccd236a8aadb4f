"""SecAgg+ (Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead"; Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine
Learning"): the server learns the sum of the participants' vectors and nothing else about any
single one, for an honest-but-curious server and up to a stated share of dropped clients.

One round, as exchanges the engine runs (every message through the wire codec, counted):

  advertise  server -> u in U1 (sampled): u's neighbours in a k-regular graph, threshold t.
             u -> server: two raw 32-byte X25519 public keys (c: encryption, s: masks, s derived
             from a fresh 127-bit seed) and a 16-byte SHA-256 commitment to a fresh 127-bit
             self-mask seed b_u.
  keys       server -> u: its neighbours' public keys and commitments.
             u -> server: for each neighbour v, one AEAD message (ChaCha20-Poly1305 under
             KA(c_u, c_v), header u, v, run, round authenticated as associated data) carrying
             share_v(seed of s_u) and share_v(b_u): t-of-k Shamir shares over GF(2^127 - 1),
             16 bytes each.
  train      server -> u in U2 (sent shares): the method's downlink in an envelope with u's
             neighbours in U2. u trains, encodes its vector in fixed point in Z_{2^64}, and sends
             y_u = x_u + PRG(b_u) + sum_{v in N(u) cap U2} sign(u, v) PRG(KA(s_u, s_v))
             (sign +1 if u < v, else -1): uniformly distributed to anyone without the seeds.
  unmask     server -> u in U3 (masked input accepted): which neighbours survived and which
             dropped since sharing, and the share ciphertexts addressed to u. u reveals b-shares
             of survivors and s-shares of the dropped, never both for one neighbour, at most once,
             as one 16-byte field element per neighbour in the order asked.
  server     rebuilds b_v (checked against the commitment) of every survivor and s_v
             (checked against the public key) of every dropped client, all secrets of the round
             in one batched Lagrange interpolation, removes PRG(b_v) and the dropped clients'
             pairwise masks in one pass over keystreams, and decodes the sum.

A wrong share is detected (the reconstruction fails its commitment or public key); the
server then looks for a consistent set of t shares, names the client whose share does
not fit, and still unmasks when enough honest shares remain. Fewer than t usable shares for
any client's secret: the round is skipped with the reason.
"""

from __future__ import annotations

import math
import random
import struct
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from featherfl.secagg import crypto
from featherfl.wire import Payload, ScalarSpec, Spec, TensorSpec

MAX_CLIENTS = 2**31 - 1
SHARE_BYTES = crypto.SECRET_BYTES  # one element of GF(2^127 - 1); its point is the holder's position
KEY_BYTES = crypto.KEY_BYTES
#: what a client advertises: its encryption and mask public keys and its self-mask commitment
KEYS_BYTES = 2 * KEY_BYTES + crypto.COMMIT_BYTES
_HEADER = struct.Struct("<IIII")  # sender, receiver, run, round: authenticated, never sent
TOKEN_BYTES = 2 * SHARE_BYTES + crypto.AEAD_TAG_BYTES  # both shares and the AEAD tag


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
    keys: torch.Tensor  # uint8 (KEYS_BYTES,): c_pk | s_pk | commit


@dataclass(frozen=True)
class KeysDown(Payload):
    KIND = "secagg.keys"
    CATEGORY = "secagg"
    ids: list
    keys: torch.Tensor  # uint8 (m, KEYS_BYTES): each neighbour's c_pk | s_pk | commit


@dataclass(frozen=True)
class SharesUp(Payload):
    """One sealed message per neighbour, in the order of the ``KeysDown`` ids."""

    KIND = "secagg.shares"
    CATEGORY = "secagg"
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
    params: list = field(default_factory=list)  # the round's public parameters of the sum (e.g. shared quantisation scales)

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
    """One share per sender of the ``UnmaskDown``, in its order: a b-share for a survivor, an
    s-share for a dropped client. ``missing``: positions whose ciphertext did not authenticate
    (their rows are zero and mean nothing)."""

    KIND = "secagg.reveal"
    CATEGORY = "secagg"
    shares: torch.Tensor  # uint8 (len(senders), SHARE_BYTES)
    missing: list


def _ids(max_len: int) -> ScalarSpec:
    return ScalarSpec("list[int]", 0, MAX_CLIENTS, max_len=max_len)


def client_specs(inner_specs: dict[str, Spec]) -> dict[str, Spec]:
    """What a client accepts from the server (beside the method's own downlinks)."""
    big = 1 << 20
    return {
        AdvertiseDown.KIND: Spec(AdvertiseDown, {}, {"neighbours": _ids(big), "threshold": ScalarSpec("int", 2, MAX_CLIENTS)}),
        KeysDown.KIND: Spec(KeysDown, {"keys": TensorSpec("uint8", (None, KEYS_BYTES))}, {"ids": _ids(big)}),
        Envelope.KIND: Spec(
            Envelope,
            {"inner": TensorSpec("uint8", (None,), max_elems=2**31)},
            {"inner_category": ScalarSpec("str", max_len=64), "neighbours": _ids(big), "participants": ScalarSpec("int", 1, MAX_CLIENTS), "params": ScalarSpec("list[float]", -1e30, 1e30, max_len=1 << 16)},
        ),
        UnmaskDown.KIND: Spec(UnmaskDown, {"tokens": TensorSpec("uint8", (None, TOKEN_BYTES))}, {"survivors": _ids(big), "dropped": _ids(big), "senders": _ids(big)}),
    }


def keys_up_spec() -> dict[str, Spec]:
    return {KeysUp.KIND: Spec(KeysUp, {"keys": TensorSpec("uint8", (KEYS_BYTES,))})}


def shares_up_spec(m: int) -> dict[str, Spec]:
    return {SharesUp.KIND: Spec(SharesUp, {"tokens": TensorSpec("uint8", (m, TOKEN_BYTES))})}


def masked_up_spec(dim: int, clear: int, bits: int = 64) -> dict[str, Spec]:
    return {MaskedUp.KIND: Spec(MaskedUp, {"y": TensorSpec(f"int{bits}", (dim,), max_elems=max(dim, 1))}, {"clear": ScalarSpec("list[float]", -1e12, 1e12, max_len=clear)})}


def reveal_up_spec(m: int) -> dict[str, Spec]:
    """``m``: at most how many senders the client was asked about (the server checks the exact
    count against its request in ``take_reveals``)."""
    return {RevealUp.KIND: Spec(RevealUp, {"shares": TensorSpec("uint8", (None, SHARE_BYTES), max_elems=max(m, 1) * SHARE_BYTES)}, {"missing": ScalarSpec("list[int]", 0, max(m - 1, 0), max_len=m)})}


def lower_bound_up(k: int, dim: int, word_bytes: int) -> int:
    """The fewest uplink bytes per client per round any run of this protocol can send at k
    neighbours, for a masked vector of ``dim`` words of ``word_bytes``: two X25519 public keys
    (2 x 32), two Shamir shares to each neighbour (a share of a perfect threshold scheme is no
    shorter than its secret: 2 x 16 bytes at the 128-bit security level), one revealed share per
    neighbour (16), and the masked words. Not counted: authentication tags, headers, the
    commitment."""
    return 2 * KEY_BYTES + k * 3 * SHARE_BYTES + dim * word_bytes


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
    """HKDF context of the pairwise mask key between u and v: either end's mask secret key with
    the other's public key gives the same key (X25519 agreement; Bonawitz et al. 2017, section 4)."""
    a, b = min(u, v), max(u, v)
    return f"featherfl-secagg/mask/{run}/{rnd}/{a}/{b}".encode()


def enc_context(run: int, rnd: int, u: int, v: int) -> bytes:
    a, b = min(u, v), max(u, v)
    return f"featherfl-secagg/enc/{run}/{rnd}/{a}/{b}".encode()


def _nonce(sender: int, receiver: int) -> bytes:
    """The pair's key is the same in both directions and seals one message each way: the
    direction is the nonce."""
    return (b"\x01" if sender < receiver else b"\x02") + bytes(11)


def _split_keys(t: torch.Tensor) -> tuple[bytes, bytes, bytes]:
    raw = _b(t)
    return raw[:KEY_BYTES], raw[KEY_BYTES : 2 * KEY_BYTES], raw[2 * KEY_BYTES :]


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
        """Round 0 of SecAgg+ (Bell et al. 2020, section 4): fresh key pairs and a self-mask seed."""
        nb = list(msg.neighbours)
        if cid in nb or len(set(nb)) != len(nb):
            raise ProtocolError("neighbour list names this client or repeats a client")
        if msg.threshold > len(nb) or msg.threshold < 2:
            raise ProtocolError(f"threshold {msg.threshold} impossible with {len(nb)} neighbours")
        if 2 * msg.threshold <= len(nb):
            raise ProtocolError(f"threshold {msg.threshold} is not above half of {len(nb)} neighbours")
        c_sk, c_pk = crypto.keypair()
        s_seed = crypto.random_element()
        s_sk = crypto.mask_secret(s_seed)
        b = crypto.random_element()
        self.state[self.KEY] = {"round": rnd, "cid": cid, "neighbours": nb, "t": msg.threshold, "c_sk": c_sk, "s_seed": s_seed, "s_sk": s_sk, "b": b, "stage": "advertised"}
        return KeysUp(_t(c_pk + crypto.public_of(s_sk) + crypto.commit(b), KEYS_BYTES))

    def keys(self, rnd: int, msg: KeysDown) -> SharesUp:
        """Round 1: t-of-m shares of the mask-key seed and of b, both shares for a neighbour sealed in
        one AEAD message under the pair's agreed key (Bonawitz et al. 2017, section 4, ShareKeys)."""
        s = self._round(rnd)
        if s["stage"] != "advertised":
            raise ProtocolError("keys sent twice")
        ids = list(msg.ids)
        if len(set(ids)) != len(ids) or not set(ids) <= set(s["neighbours"]) or msg.keys.shape[0] != len(ids):
            raise ProtocolError("keys for clients that are not this client's neighbours")
        if len(ids) < s["t"]:
            raise ProtocolError(f"{len(ids)} neighbours left, fewer than the threshold {s['t']}")
        keys = [_split_keys(msg.keys[i]) for i in range(len(ids))]
        c_pks = [k[0] for k in keys]
        s_pks = [k[1] for k in keys]
        if len(set(c_pks)) != len(c_pks) or len(set(s_pks)) != len(s_pks):
            raise ProtocolError("two neighbours with the same public key")
        shares = crypto.share_many([s["s_seed"], s["b"]], s["t"], len(ids))
        me = s["cid"]
        try:
            enc_keys = crypto.agree_many(s["c_sk"], c_pks, [enc_context(self.run, rnd, me, v) for v in ids])
        except ValueError:
            raise ProtocolError("a neighbour's public key gives no shared secret") from None
        tokens = []
        for i, v in enumerate(ids):
            key = enc_keys[i]
            plain = crypto.element_bytes(shares[i][0]) + crypto.element_bytes(shares[i][1])
            tokens.append(crypto.seal(key, _nonce(me, v), _HEADER.pack(me, v, self.run, rnd), plain))
        s.update(stage="shared", ids=ids, enc_keys=enc_keys, s_pks=s_pks)
        return SharesUp(_t(tokens, TOKEN_BYTES))

    def mask(self, rnd: int, msg: Envelope, x: np.ndarray, fraction_bits: int, bits: int = 64) -> tuple[np.ndarray, int]:
        """y = encode(x) + PRG(b) + sum_v sign(u, v) PRG(KA(s_u, s_v)) over the neighbours in U2
        (Bonawitz et al. 2017, section 4, MaskedInputCollection): one keystream per key."""
        s = self._round(rnd)
        if s["stage"] != "shared":
            raise ProtocolError("masked input asked before the key exchange or twice")
        u2 = list(msg.neighbours)
        if not set(u2) <= set(s["ids"]) or len(set(u2)) != len(u2):
            raise ProtocolError("masking set names clients this client has no keys for")
        bound = crypto.bound_for(msg.participants, fraction_bits, bits)
        words, clipped = crypto.encode_fixed(x, fraction_bits, bound, bits)
        idx = {v: i for i, v in enumerate(s["ids"])}
        me = s["cid"]
        try:
            keys = crypto.agree_many(s["s_sk"], [s["s_pks"][idx[v]] for v in u2], [mask_context(self.run, rnd, me, v) for v in u2])
        except ValueError:
            raise ProtocolError("a neighbour's public key gives no shared secret") from None
        plus = [crypto.self_mask_key(s["b"])] + [key for v, key in zip(u2, keys) if me < v]
        minus = [key for v, key in zip(u2, keys) if me > v]
        n = len(words)
        y = words + crypto.keystream_sum(plus, n, bits)
        if minus:
            y = y - crypto.keystream_sum(minus, n, bits)
        s.update(stage="masked", u2=u2)
        return y, clipped

    def unmask(self, rnd: int, msg: UnmaskDown) -> RevealUp:
        """Round 3: for each sender asked about, its b-share if it survived, its mask-key share if it
        dropped, never both for one neighbour and only once (Bell et al. 2020, section 4)."""
        s = self._round(rnd)
        if s["stage"] != "masked":
            raise ProtocolError("unmasking asked before masking or twice")
        surv, drop = set(msg.survivors), set(msg.dropped)
        u2 = set(s["u2"])
        if surv & drop or not (surv | drop) <= u2 or len(surv) != len(msg.survivors) or len(drop) != len(msg.dropped):
            raise ProtocolError("survivor and dropped sets overlap or name clients outside the masking set")
        if len(surv) + 1 < s["t"]:
            raise ProtocolError(f"{len(surv) + 1} survivors, fewer than the threshold {s['t']}")
        senders = list(msg.senders)
        if len(senders) != msg.tokens.shape[0] or len(set(senders)) != len(senders):
            raise ProtocolError("unmasking request with a ciphertext count that does not match its senders")
        idx = {v: i for i, v in enumerate(s["ids"])}
        me = s["cid"]
        rows, missing = [], []
        for j, v in enumerate(senders):
            plain = b""
            if v in idx and (v in surv or v in drop):
                try:
                    plain = crypto.open_sealed(s["enc_keys"][idx[v]], _nonce(v, me), _HEADER.pack(v, me, self.run, rnd), _b(msg.tokens[j]))
                except ValueError:
                    plain = b""  # not from v, or altered: nothing to reveal for v
            if len(plain) != 2 * SHARE_BYTES:
                missing.append(j)
                rows.append(bytes(SHARE_BYTES))
            else:
                rows.append(plain[SHARE_BYTES:] if v in surv else plain[:SHARE_BYTES])
        self.state.pop(self.KEY, None)  # at most one reveal per round; the round's secrets are gone
        return RevealUp(_t(rows, SHARE_BYTES), missing)


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
    unmask_sent: dict[int, tuple[list[int], list[int], list[int]]] = field(default_factory=dict)  # cid -> (survivors, dropped, senders)
    reveals: dict[int, RevealUp] = field(default_factory=dict)
    bad_share_clients: set = field(default_factory=set)
    seconds: dict[str, float] = field(default_factory=dict)  # where unmask_sum's CPU time went
    _u2_set: frozenset = field(default=frozenset(), repr=False)

    # stage 1: advertise
    def advertise(self) -> dict[int, Payload]:
        return {c: AdvertiseDown(nb, self.t) for c, nb in self.graph.items()}

    def take_keys(self, replies: dict[int, KeysUp]) -> dict:
        seen: set[bytes] = set()
        rejected = 0
        for c in sorted(replies):
            c_pk, s_pk, com = _split_keys(replies[c].keys)
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
            out[c] = KeysDown(ids, _t([b"".join(self.keys[v]) for v in ids], KEYS_BYTES))
        return out

    def take_shares(self, replies: dict[int, SharesUp]) -> None:
        for c in sorted(replies):
            r = replies[c]
            to = self.keys_sent.get(c)
            if to is None or r.tokens.shape[0] != len(to):
                continue
            raw = _b(r.tokens)
            for i, v in enumerate(to):
                self.tokens[(c, v)] = raw[i * TOKEN_BYTES : (i + 1) * TOKEN_BYTES]
            self.u2.append(c)
        self.stage = "masked"

    def masking_set(self, c: int) -> list[int]:
        if len(self._u2_set) != len(self.u2):  # built once per round, not once per client
            self._u2_set = frozenset(self.u2)
        return [v for v in self.graph[c] if v in self._u2_set]

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
            self.unmask_sent[c] = (surv, drop, senders)
            out[c] = UnmaskDown(surv, drop, senders, _t([self.tokens[(v, c)] for v in senders], TOKEN_BYTES))
        self.stage = "reveal"
        return out

    def take_reveals(self, replies: dict[int, RevealUp]) -> None:
        for c in sorted(replies):
            r = replies[c]
            sent = self.unmask_sent.get(c)
            if sent is None or r.shares.shape[0] != len(sent[2]) or len(set(r.missing)) != len(r.missing) or any(not 0 <= j < len(sent[2]) for j in r.missing):
                continue  # not what was asked: none of this client's reveal is used
            self.reveals[c] = r
        self.stage = "done"

    def _revealed(self) -> dict[tuple[str, int], list[int | None]]:
        """(kind, v) -> the revealed share of v's secret at each point x = 1..m (None where none came).
        v made share x = i + 1 for the i-th client it was sent keys of, so a share's point is its
        holder's position; a 16-byte value that is no field element is a wrong share (its holder
        is named)."""
        pos = {v: {c: i for i, c in enumerate(ids)} for v, ids in self.keys_sent.items()}
        out: dict[tuple[str, int], list[int | None]] = {}
        p, width = crypto.FIELD_PRIME, SHARE_BYTES
        for c, r in sorted(self.reveals.items()):
            surv, _, senders = self.unmask_sent[c]
            surv_set, missing = set(surv), set(r.missing)
            raw = _b(r.shares)
            for j, v in enumerate(senders):
                if j in missing:
                    continue
                y = int.from_bytes(raw[j * width : (j + 1) * width], "little")
                i = pos.get(v, {}).get(c)
                if y >= p or i is None:
                    self.bad_share_clients.add(c)
                    continue
                key = ("b" if v in surv_set else "s", v)
                slots = out.get(key)
                if slots is None:
                    slots = out[key] = [None] * len(self.keys_sent[v])
                slots[i] = y
        return out

    @staticmethod
    def _points(slots: list[int | None]) -> tuple[tuple[int, ...], list[int]]:
        xs = tuple(i + 1 for i, y in enumerate(slots) if y is not None)
        return xs, [slots[x - 1] for x in xs]

    def _repair(self, v: int, what: str, shares: list[tuple[int, int, int]], check) -> int:
        """Some share of v's secret is wrong: find a consistent set of t shares, then test every
        other share against it and name the holders whose share does not fit."""
        rng = random.Random(v)
        candidates = [shares[: self.t]] + [rng.sample(shares, self.t) for _ in range(200)]
        good = None
        for subset in candidates:
            sec = crypto.combine_many([(tuple(x for _, x, _ in subset), [y for _, _, y in subset])])[0]
            if check(sec):
                good = (subset, sec)
                break
        if good is None:
            raise Skip(f"client {v}'s {what} could not be rebuilt: no consistent set of {self.t} shares")
        subset, sec = good
        base = subset[: self.t - 1]
        in_subset = {c for c, _, _ in subset}
        for share in shares:
            if share[0] in in_subset:
                continue
            trial = base + [share]
            if not check(crypto.combine_many([(tuple(x for _, x, _ in trial), [y for _, _, y in trial])])[0]):
                self.bad_share_clients.add(share[0])
        return sec

    def unmask_sum(self, masked: dict[int, np.ndarray]) -> np.ndarray:
        """The sum of the survivors' encoded vectors (ring words): the masked inputs added, every
        secret of the round rebuilt in one batch (checked against its commitment or public key;
        a wrong share is searched for and named), the self-masks of the survivors and the
        dropped clients' pairwise masks removed in one pass over their keystreams (Bonawitz et
        al. 2017, section 4, Unmasking)."""
        if set(masked) != set(self.u3):
            raise Skip("masked inputs do not match the survivors the unmasking step was run for")
        clock = time.process_time()
        first = next(iter(masked.values()))
        n, bits = len(first), first.dtype.itemsize * 8
        total = np.zeros(n, dtype=first.dtype)
        for c in self.u3:
            np.add(total, masked[c], out=total)
        now = time.process_time()
        self.seconds["sum"], clock = now - clock, now

        s3 = set(self.u3)
        dropped = [v for v in self.u2 if v not in s3 and any(u in s3 for u in self.masking_set(v))]
        wanted = [("b", v) for v in self.u3] + [("s", v) for v in dropped]
        revealed = self._revealed()
        groups = []
        for kind, v in wanted:
            groups.append(self._points(revealed.get((kind, v), [])))
            got = len(groups[-1][0])
            if got < self.t:
                what = "self-mask seed" if kind == "b" else "mask key"
                raise Skip(f"client {v}'s {what} has {got} shares, fewer than the threshold {self.t} (too many clients dropped)")
        # All shares at once: honest shares lie on one polynomial of degree t - 1, so the
        # interpolant through all of them gives the secret; a single wrong one changes it.
        secrets = dict(zip(wanted, crypto.combine_many(groups)))
        now = time.process_time()
        self.seconds["shamir"], clock = now - clock, now

        def check_b(v):
            com = self.keys[v][2]
            return lambda sec: crypto.commit(sec) == com

        def check_s(v):
            pk = self.keys[v][1]
            return lambda sec: crypto.public_of(crypto.mask_secret(sec)) == pk

        for kind, v in wanted:
            check = check_b(v) if kind == "b" else check_s(v)
            if not check(secrets[(kind, v)]):
                what = "self-mask seed" if kind == "b" else "mask key"
                xs, ys = self._points(revealed[(kind, v)])
                holders = self.keys_sent[v]
                secrets[(kind, v)] = self._repair(v, what, [(holders[x - 1], x, y) for x, y in zip(xs, ys)], check)
        now = time.process_time()
        self.seconds["check"], clock = now - clock, now

        # what survivor u added for dropped v, rebuilt from v's secret key and u's public key
        plus, minus = [crypto.self_mask_key(secrets[("b", v)]) for v in self.u3], []
        for v in dropped:
            us = [u for u in self.masking_set(v) if u in s3]
            keys = crypto.agree_many(crypto.mask_secret(secrets[("s", v)]), [self.keys[u][1] for u in us], [mask_context(self.run, self.rnd, u, v) for u in us])
            for u, key in zip(us, keys):
                (plus if u < v else minus).append(key)
        now = time.process_time()
        self.seconds["agree"], clock = now - clock, now
        total = total - crypto.keystream_sum(plus, n, bits)
        if minus:
            total = total + crypto.keystream_sum(minus, n, bits)
        self.seconds["masks"] = time.process_time() - clock
        return total
