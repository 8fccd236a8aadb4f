"""Run a round's clients as one batched computation (``engine.vectorize``), in process.

The device side of each client stays what :func:`featherfl.engines.base.run_client`
does: decode (validating) its downlink, update, encode its reply. Only the middle
step is shared: a client half that offers ``update_many`` trains every client of
the round at once (``featherfl.algorithms.vectorized``). Each client still gets its
own bytes, its own reply and its own state.

When anything in the batched call fails, the engine runs those clients one by one
instead, so a failure is attributed to the client that caused it exactly as on
the sequential path.
"""

from __future__ import annotations

import featherfl.wire as wire
from featherfl.algorithms.base import ClientData, ClientHalf


def can_batch(cfg, client: ClientHalf, n_jobs: int) -> bool:
    """Whether this round's clients may run batched: enabled, more than one, and the client half supports it."""
    if cfg["engine.vectorize"] == "off" or n_jobs < 2:
        return False
    check = getattr(client, "can_update_many", None)  # a wrapper that alters replies one by one (attackers) says no
    return bool(check and check())


def run_clients_batched(client: ClientHalf, rnd: int, jobs: dict[int, bytes], data: dict[int, ClientData], states: dict[int, dict], run_id: int) -> dict[int, bytes]:
    """Decode every downlink, call ``client.update_many`` once, encode every reply."""
    specs = client.downlink_specs(rnd)
    decoded: dict[bytes, wire.Payload] = {}  # identical downlink bytes (one global model) are decoded and checked once
    downs = {}
    for cid, b in jobs.items():
        if b not in decoded:
            decoded[b] = wire.decode(b, specs, round=rnd, run=run_id)
        downs[cid] = decoded[b]
    ups = client.update_many(rnd, downs, {cid: data[cid] for cid in jobs}, {cid: states[cid] for cid in jobs})
    if set(ups) != set(jobs):
        raise RuntimeError(f"update_many answered for clients {sorted(ups)}, asked for {sorted(jobs)}")
    return {cid: wire.encode(ups[cid], rnd, run_id) for cid in jobs}
