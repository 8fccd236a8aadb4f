"""``SecAgg(inner)``: the SecAgg+ protocol (``protocol.py``) run around any summable method.

The server half runs the protocol's exchanges as the engine's extra round exchanges
(``Algorithm.round_configure``: key advertisement and share exchange before training, the
unmasking step after it), wraps the method's downlink in an envelope with the masking set,
and hands the method only the unmasked sum, which the method's own declaration
(``Algorithm.summation``) turns into its round. The client half wraps the
method's client: it answers the protocol messages and masks the method's reply. Every
message goes through the wire codec, so the ledger counts the protocol's bytes ("secagg").
"""

from __future__ import annotations

import numpy as np
import torch

import featherfl.secagg.crypto as crypto
import featherfl.secagg.protocol as protocol
import featherfl.wire as wire
from featherfl.algorithms.base import Algorithm, ClientData, ClientHalf, ClientWrapper, Wrapper
from featherfl.engines.base import RoundSkipped
from featherfl.secagg import words
from featherfl.seeding import derive_seed


#: where the wrapped method's own client state lives inside the client's state
METHOD_STATE = "method"


def with_counts(x: np.ndarray, counts: int, fraction_bits: int) -> np.ndarray:
    """The summand with its trailing ``counts`` whole numbers scaled to one fixed-point step each,
    so a count takes log2(n x max count) bits of the word, not the values' range."""
    x = np.array(x, dtype=np.float64)
    if counts:
        x[-counts:] = np.rint(x[-counts:]) * 2.0**-fraction_bits
    return x


def counts_back(x: np.ndarray, counts: int, fraction_bits: int) -> np.ndarray:
    """The inverse of :func:`with_counts` on a decoded sum."""
    if counts:
        x[-counts:] = np.rint(x[-counts:] * 2.0**fraction_bits)
    return x


class SecAggClient(ClientWrapper):
    """The device side: answers the protocol's messages and masks the method's reply, summed as
    the method's declaration (``adapter``, an ``Algorithm.summation``) says."""

    def __init__(self, inner: ClientHalf, adapter, ring_bits: int, fraction_bits: int):
        super().__init__(inner)
        self.adapter = adapter
        self.ring_bits, self.fraction_bits = ring_bits, fraction_bits

    def downlink_specs(self, rnd):
        """The protocol's messages, and in the clear what the wrapped client accepts: a setup
        exchange (FAug's seed request and generator) is not summed, so it is not masked either."""
        return {**self.inner.downlink_specs(rnd), **protocol.client_specs({})}

    def update(self, rnd: int, down: wire.Payload, data: ClientData, state: dict) -> wire.Payload:
        session = protocol.ClientSession(state, self.ctx.run_id)
        if isinstance(down, protocol.AdvertiseDown):
            return session.advertise(rnd, data.cid, down)
        if isinstance(down, protocol.KeysDown):
            return session.keys(rnd, down)
        if isinstance(down, protocol.UnmaskDown):
            return session.unmask(rnd, down)
        if not isinstance(down, protocol.Envelope):  # a setup exchange of a wrapper inside (FAug's)
            return self.inner.update(rnd, down, data, state.setdefault(METHOD_STATE, {}))
        inner_down = self._open(rnd, down, state)
        # the method keeps its own state apart from the protocol's (some methods reset theirs)
        reply = self.inner.update(rnd, inner_down, data, state.setdefault(METHOD_STATE, {}))
        return self._mask(rnd, data.cid, down, inner_down, reply, state)

    def _open(self, rnd: int, env: protocol.Envelope, state: dict) -> wire.Payload:
        """The method's downlink out of the envelope, validated against the method's own specs."""
        specs = self.adapter.client_down_specs(self.inner.downlink_specs(rnd))
        inner_down = wire.decode(bytes(env.inner.numpy().tobytes()), specs, round=rnd, run=self.ctx.run_id)
        return self.adapter.client_down(inner_down, state)

    def _mask(self, rnd: int, cid: int, env: protocol.Envelope, inner_down: wire.Payload, reply: wire.Payload, state: dict) -> protocol.MaskedUp:
        self.adapter.cid, self.adapter.params = cid, list(env.params)
        x, clear = self.adapter.summand(rnd, reply, inner_down, state)
        x = with_counts(x, self.adapter.count_entries(), self.fraction_bits)
        bound = crypto.bound_for(env.participants, self.fraction_bits, self.ring_bits)
        clipped = min(np.count_nonzero(np.abs(x) > bound), int(bound * 2.0**self.fraction_bits))
        x = np.concatenate([x, [clipped * 2.0**-self.fraction_bits]])
        y, _ = protocol.ClientSession(state, self.ctx.run_id).mask(rnd, env, x, self.fraction_bits, self.ring_bits)
        return protocol.MaskedUp(torch.from_numpy(y.view(crypto.RINGS[self.ring_bits][1]).copy()), clear)

    def update_many(self, rnd: int, downs: dict, data: dict, states: dict) -> dict:
        """Batched local training (``engine.vectorize``) where the method has it: the protocol's own
        messages are answered one by one, the method's clients train together, each reply is masked."""
        out = {c: self.update(rnd, d, data[c], states[c]) for c, d in downs.items() if not isinstance(d, protocol.Envelope)}
        envs = {c: d for c, d in downs.items() if isinstance(d, protocol.Envelope)}
        if envs:
            inner_downs = {c: self._open(rnd, env, states[c]) for c, env in envs.items()}
            replies = self.inner.update_many(rnd, inner_downs, {c: data[c] for c in envs}, {c: states[c].setdefault(METHOD_STATE, {}) for c in envs})
            for c, env in envs.items():
                out[c] = self._mask(rnd, c, env, inner_downs[c], replies[c], states[c])
        return out

    def evaluate(self, state, x, y):
        return self.inner.evaluate(state.setdefault(METHOD_STATE, {}), x, y)


class SecAgg(Wrapper):
    """The server half; every call it does not override goes to ``inner`` unchanged."""

    def __init__(self, inner: Algorithm):
        super().__init__(inner)
        self.opts = self.cfg.section("secagg")
        self.adapter = inner.summation(self.ctx, inner.name, server=inner)
        self.ring_bits, self.fraction_bits = words(self.cfg, inner.summation, inner.name)
        self.round: protocol.ServerRound | None = None
        self.sent_downs: dict[int, wire.Payload] = {}

    @classmethod
    def wrap_client(cls, client, method):
        """The device side around ``client``, with the method's declaration built from the client's context alone."""
        summation = client.summation_around(method.summation)
        return SecAggClient(client, summation(client.ctx, method.name), *words(client.ctx.cfg, summation, method.name))

    # --- the protocol's exchanges ---
    def round_configure(self, rnd, stage, client_ids):
        r = self.round
        if stage == "before":
            if r is None or r.rnd != rnd:
                k = protocol.neighbour_count(len(client_ids), self.opts["neighbours"])
                t = protocol.threshold_for(k, self.opts["threshold"])
                graph = protocol.neighbour_graph(client_ids, k, derive_seed(self.ctx.seed, "secagg-graph", rnd))
                self.round = protocol.ServerRound(rnd, self.ctx.run_id, graph, t)
                return self.round.advertise() if k >= 2 else {}
            if r.stage == "keys":
                return r.send_keys()
            return {}
        if r is not None and r.rnd == rnd and r.stage == "masked":
            return r.send_unmask(client_ids)
        return {}

    def round_uplink_specs(self, rnd, stage, cid):
        r = self.round
        if r.stage == "advertise":
            return protocol.keys_up_spec()
        if r.stage == "keys":
            return protocol.shares_up_spec(len(r.keys_sent.get(cid, [])))
        return protocol.reveal_up_spec(len(r.graph.get(cid, [])))

    def round_aggregate(self, rnd, stage, replies):
        r = self.round
        if r.stage == "advertise":
            return r.take_keys(replies)
        if r.stage == "keys":
            r.take_shares(replies)
            if not r.u2:  # nobody can mask: the round contacts no one
                r.stage = "masked"
            return {"secagg_neighbours": len(next(iter(r.graph.values()), [])), "secagg_threshold": r.t, "secagg_sharing": len(r.u2)}
        if r.stage == "reveal":
            r.take_reveals(replies)
        return {}

    def round_dropout(self, rnd, stage):
        return self.opts["dropout"] if stage == "after" else 0.0

    # --- the method's round, masked ---
    def configure(self, rnd, client_ids):
        r = self.round
        if r is None or r.rnd != rnd or not r.u2:
            return {}
        downs = self.adapter.configure(rnd, r.u2)
        params = self.adapter.round_params(rnd)
        out = {}
        for c in r.u2:
            data = wire.encode(downs[c], rnd, self.ctx.run_id)
            out[c] = protocol.Envelope(torch.frombuffer(bytearray(data), dtype=torch.uint8), downs[c].CATEGORY, r.masking_set(c), len(r.u2), params)
        return out

    def uplink_specs(self, rnd, cid):
        return protocol.masked_up_spec(self.adapter.dim(rnd, cid) + 1, self.adapter.clear_len(), self.ring_bits)

    def aggregate(self, rnd, replies):
        r = self.round
        unsigned = crypto.RINGS[self.ring_bits][0]
        masked = {c: replies[c].y.numpy().view(unsigned) for c in sorted(replies)}
        try:
            total = r.unmask_sum(masked)
        except protocol.Skip as e:
            raise RoundSkipped(f"secagg: {e}") from None
        x = counts_back(crypto.decode_fixed(total, self.fraction_bits), self.adapter.count_entries() + 1, self.fraction_bits)
        metrics = self.adapter.finish(rnd, x[:-1], {c: list(replies[c].clear) for c in replies}, sorted(replies))
        metrics.update(
            {
                "secagg_masked_inputs": len(r.u3),
                "secagg_dropped_before_masking": len(r.u2) - len(r.u3),
                "secagg_revealed": len(r.reveals),
                "secagg_clipped_values": int(round(x[-1])),
                "secagg_bad_shares": len(r.bad_share_clients),
            }
        )
        if r.bad_share_clients:
            metrics["secagg_bad_share_clients"] = sorted(r.bad_share_clients)
        return metrics

    def summary_extra(self) -> dict:
        return {**self.inner.summary_extra(), "secagg": self.cfg["secagg.protocol"], "secagg_words": f"{self.ring_bits}-bit, {self.fraction_bits} fraction bits"}

    def state_dict(self) -> dict:
        out = self.inner.state_dict()
        own = self.adapter.state_dict()
        return out if own is None else {**out, "secagg": own}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)
        if "secagg" in state:
            self.adapter.load_state_dict(state["secagg"])
