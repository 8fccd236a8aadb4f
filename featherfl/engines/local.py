"""The in-process engine: clients run one after another in this process.

The default, and the reference the Ray and Flower engines are checked against.
Client state lives in a dict keyed by client id and is saved in checkpoints.
"""

from __future__ import annotations

import time
import traceback

from featherfl.engines.base import ClientFailure, ClientOutcome, Engine, ServerHeldStates, run_client
from featherfl.engines.batched import can_batch, run_clients_batched


class LocalEngine(ServerHeldStates, Engine):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.client = self.algorithm.make_client()
        self.states: dict[int, dict] = {}

    def _execute(self, rnd, jobs):
        if can_batch(self.cfg, self.client, len(jobs)):
            t = time.perf_counter()
            states = {cid: self.states.setdefault(cid, {}) for cid in jobs}
            try:
                replies = run_clients_batched(self.client, rnd, jobs, {cid: self.client_data[cid] for cid in jobs}, states, self.run_id)
            except Exception:  # run them one by one: a failure is then attributed to its own client
                replies = None
            if replies is not None:
                # each client is charged an equal share of the batch's time (engine.deadline)
                share = (time.perf_counter() - t) / len(jobs)
                return {cid: ClientOutcome(reply=replies[cid], seconds=share) for cid in jobs}
        out: dict[int, ClientOutcome] = {}
        for cid, down in jobs.items():
            state = self.states.setdefault(cid, {})
            t = time.perf_counter()
            try:
                reply = run_client(self.client, rnd, down, self.client_data[cid], state, self.run_id)
            except Exception as e:  # a failing client must not end the run
                out[cid] = ClientOutcome.raised(ClientFailure.of(e, traceback.format_exc()), time.perf_counter() - t)
                continue
            out[cid] = ClientOutcome(reply=reply, seconds=time.perf_counter() - t)
            if self.on_client is not None:
                self.on_client(rnd, len(out), len(jobs))
        return out

    def evaluate_clients(self, x, y):
        return self.evaluate_held(self.client.evaluate, x, y)
