"""The Ray engine: clients run in a pool of Ray actors, for scaled-out simulation.

Why Ray: one machine's cores (``ray.init(num_cpus=engine.num_cpus)``) or a whole
cluster (``engine.address``) run many clients at once, with no networking code of
our own. Each actor holds one copy of the algorithm's client half and the
partitioned client data (shipped once through Ray's object store); a round sends
each actor only the encoded downlink bytes and that client's persistent state,
and gets back the encoded reply bytes and the new state.

Everything that decides *what* a round does (sampling, dropout, decoding and
validating replies, the byte ledger, the quorum) stays in
:class:`featherfl.engines.base.Engine`, and the device side is the same
:func:`~featherfl.engines.base.run_client` the local engine calls, so a run on
Ray gives the local engine's metrics and bytes for the same seed. Client state
lives here in the driver (so checkpoints and resume work as locally): it travels
to the actor with the job and back with the reply; it is process-to-process
traffic inside the simulation, not federated traffic, so the ledger ignores it.

Batched rounds (``engine.vectorize``) go to the actors as the same fixed client groups
the local engine trains (``engine.group_clients``, :func:`featherfl.engines.batched.plan_groups`,
:func:`~featherfl.engines.batched.run_group`), one group per actor call, costliest first: the rows are then the local engine's whatever the number of
actors (or of local workers).
"""

from __future__ import annotations

import time

from featherfl.config import ConfigError
from featherfl.engines.base import ClientFailure, ClientOutcome, Engine, ServerHeldStates, run_client
from featherfl.engines.batched import client_rows, cohort_steps, plan_groups, run_group


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("config key 'engine.name': 'ray' needs Ray; install it with pip install 'featherfl[ray]'") from None
    return ray


def _torch_threads() -> int:
    """The driver's torch thread count: float reductions (and so results) can depend on it."""
    import torch

    return torch.get_num_threads()


class ClientWorker:
    """One actor: a client half (built without the server, ``featherfl.assembly.build_client``)
    plus every client's data; runs whichever client it is given.

    The client half is built here from the run's context rather than pickled from
    the driver: a client half may hold tensors that share storage (e.g. parameters
    that are views into one flat vector), and pickling would silently split them.
    """

    def __init__(self, ctx, client_data, threads: int):
        import torch

        from featherfl.assembly import build_client

        torch.set_num_threads(threads)

        self.client = build_client(ctx)
        self.client_data = client_data

    def train(self, cid: int, rnd: int, down: bytes, state: dict, run_id: int):
        t = time.perf_counter()
        try:
            reply = run_client(self.client, rnd, down, self.client_data[cid], state, run_id)
        except Exception as e:  # a failing client must not end the run
            import traceback

            return cid, None, ClientFailure.of(e, traceback.format_exc()), time.perf_counter() - t, state
        return cid, reply, None, time.perf_counter() - t, state

    def can_update_many(self) -> bool:
        check = getattr(self.client, "can_update_many", None)  # as featherfl.engines.batched.can_batch asks
        return bool(check and check())

    def local_steps(self, rows: list[int]) -> list[int] | None:
        """Every client's local steps from its rows, for the groups' cost model (asked once)."""
        return cohort_steps(self.client, rows)

    def train_group(self, rnd: int, jobs: dict[int, bytes], states: dict[int, dict], run_id: int):
        """One fixed group of clients in one batched call (one by one if it fails), as the local engine runs it."""
        out = run_group(self.client, rnd, jobs, {cid: self.client_data[cid] for cid in jobs}, states, run_id)
        return [(cid, o.reply, o.failure, o.seconds, states[cid]) for cid, o in out.items()]

    def evaluate(self, cid: int, state: dict, x, y):
        return cid, self.client.evaluate(state, x, y), state


class RayEngine(ServerHeldStates, Engine):
    """Runs ``run_client`` for each sampled client in a Ray actor pool."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        ray = _import_ray()
        self._ray = ray
        self._owns_ray = False
        if not ray.is_initialized():
            opts = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
            address = self.cfg["engine.address"]
            if address:
                ray.init(address=address, **opts)
            else:
                ray.init(num_cpus=self.cfg["engine.num_cpus"], **opts)
            self._owns_ray = True
        cpus = int(ray.available_resources().get("CPU", self.cfg["engine.num_cpus"])) or 1
        size = max(1, min(cpus, self.cfg["engine.num_cpus"], len(self.client_data)))
        threads = self.cfg["engine.threads"] or _torch_threads()
        worker = ray.remote(num_cpus=1)(ClientWorker)
        ctx_ref = ray.put(self.algorithm.ctx)
        data_ref = ray.put(self.client_data)
        self.actors = [worker.remote(ctx_ref, data_ref, threads) for _ in range(size)]
        self.states: dict[int, dict] = {}
        self._batchable: bool | None = None  # whether the client half trains batched: asked of an actor once
        self._steps: list[int] | None = None  # every client's local steps: asked of an actor once

    def _batches(self, n_jobs: int) -> bool:
        """``featherfl.engines.batched.can_batch``, with the client half's answer from an actor."""
        if self.cfg["engine.vectorize"] == "off" or n_jobs < 2:
            return False
        if self._batchable is None:
            self._batchable = bool(self._ray.get(self.actors[0].can_update_many.remote()))
            if self._batchable:
                self._steps = self._ray.get(self.actors[0].local_steps.remote(client_rows(self.client_data)))
        return self._batchable

    def _map(self, submit, items):
        """Run ``submit(actor, item)`` over an ActorPool; yields results as they finish."""
        from ray.util import ActorPool

        pool = ActorPool(self.actors)
        for item in items:
            pool.submit(submit, item)
        while pool.has_next():
            yield pool.get_next_unordered()

    def _execute(self, rnd, jobs):
        out: dict[int, ClientOutcome] = {}
        if self._batches(len(jobs)):
            cids = list(jobs)
            groups = plan_groups(cids, self.cfg["engine.group_clients"], None if self._steps is None else [self._steps[c] for c in cids], self.cfg["engine.group_overhead"])
            submit = lambda actor, g: actor.train_group.remote(rnd, {c: jobs[c] for c in g}, {c: self.states.get(c, {}) for c in g}, self.run_id)
            results = (r for group in self._map(submit, groups) for r in group)
        else:
            submit = lambda actor, job: actor.train.remote(job[0], rnd, job[1], self.states.get(job[0], {}), self.run_id)
            results = self._map(submit, sorted(jobs.items()))
        pending = set(jobs)
        try:
            for cid, reply, failure, seconds, state in results:
                pending.discard(cid)
                self.states[cid] = state
                out[cid] = ClientOutcome.raised(failure, seconds) if failure else ClientOutcome(reply=reply, seconds=seconds)
        except self._ray.exceptions.RayError as e:  # a dead actor or worker: the rest count as failed
            for cid in pending:
                out.setdefault(cid, ClientOutcome.raised(ClientFailure(e.__class__.__name__, "")))
        return out

    def evaluate_clients(self, x, y):
        ray = self._ray
        xr, yr = ray.put(x), ray.put(y)
        submit = lambda actor, cid: actor.evaluate.remote(cid, self.states.get(cid, {}), xr, yr)
        res: dict[int, dict] = {}
        for cid, metrics, state in self._map(submit, range(len(self.client_data))):
            self.states[cid] = state
            res[cid] = metrics
        return dict(sorted(res.items()))

    def close(self):
        for a in getattr(self, "actors", []):
            self._ray.kill(a)
        self.actors = []
        if self._owns_ray:
            self._ray.shutdown()
            self._owns_ray = False
