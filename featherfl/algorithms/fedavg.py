"""FedAvg and FedSGD (McMahan et al. 2017, "Communication-Efficient Learning of Deep
Networks from Decentralized Data"): the backprop baseline every method is compared with.

Wire: down = all model state (flat float32 vector), up = all model state (FedAvg,
Alg. 1: the sample-weighted average of client weights) or the local gradient
(FedSGD: one gradient per client per round, averaged and applied by a server
optimizer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featherfl.algorithms import sections
from featherfl.algorithms.aggregate import Aggregator
from featherfl.algorithms.base import Algorithm, ClientData, ClientHalf, Context
from featherfl.algorithms.summation import WeightedMean
from featherfl.seeding import generator
from featherfl.algorithms import vectorized
from featherfl.algorithms.training import evaluate_model, make_optimizer, train_epochs
from featherfl.devices import model_device
from featherfl.models import flat_state, load_flat_state, state_tensors
from featherfl.wire import Payload, ScalarSpec, Spec, TensorSpec

MAX_SAMPLES = 10**9


@dataclass(frozen=True)
class WeightsDown(Payload):
    KIND = "fedavg.down"
    CATEGORY = "weights"
    weights: torch.Tensor


@dataclass(frozen=True)
class WeightsUp(Payload):
    KIND = "fedavg.up"
    CATEGORY = "weights"
    weights: torch.Tensor
    num_samples: int


@dataclass(frozen=True)
class GradientUp(Payload):
    KIND = "fedsgd.up"
    CATEGORY = "gradients"
    gradient: torch.Tensor
    num_samples: int


def weights_spec(cls, n: int, field_name: str, max_abs: float = 1e6, with_samples: bool = False) -> Spec:
    scalars = {"num_samples": ScalarSpec("int", 1, MAX_SAMPLES)} if with_samples else {}
    return Spec(cls, {field_name: TensorSpec("float32", (n,), max_abs=max_abs)}, scalars)


class WeightsClient(ClientHalf):
    """Client half of FedAvg: load the global weights, train E local epochs, send weights back."""

    section = "fedavg"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.model = ctx.build_model()
        self.n = flat_state(self.model).numel()
        self.opts = ctx.cfg.section(self.section)
        self._down_spec: Spec | None = None

    def downlink_specs(self, rnd: int) -> dict[str, Spec]:
        if self._down_spec is None:  # the same every round: built once
            self._down_spec = weights_spec(WeightsDown, self.n, "weights")
        return {WeightsDown.KIND: self._down_spec}

    def update(self, rnd: int, down: WeightsDown, data: ClientData, state: dict) -> Payload:
        load_flat_state(self.model, down.weights)
        opt = make_optimizer(self.model.parameters(), self.opts)
        gen = generator(self.ctx.seed, "fedavg-client", rnd, data.cid)
        train_epochs(self.model, data.x, data.y, opt, self.opts.local_epochs, self.opts.batch_size, gen, self.opts.max_steps)
        return WeightsUp(flat_state(self.model), len(data))

    def can_update_many(self) -> bool:
        """Whether ``update_many`` gives exactly what ``update`` gives, client by client: not for a
        subclass or a patched ``update`` (FedSGD, test doubles), or models with BatchNorm or
        dropout (``vectorized.supports``)."""
        return type(self).update is _SEQUENTIAL_UPDATE and vectorized.supports(self.model)

    def local_steps(self, rows: int) -> int | None:
        """``train_epochs``'s steps on ``rows`` rows: E epochs of ceil(rows / B) batches, at most
        ``max_steps``; None for a model whose batched steps compute only the clients still training
        (``vectorized.computes_only_active``), where grouping clients by steps buys nothing."""
        if vectorized.computes_only_active(self.model):
            return None
        o = self.opts
        per_epoch = (1 if rows else 0) if o.batch_size <= 0 else -(-rows // o.batch_size)
        steps = o.local_epochs * per_epoch
        return min(steps, o.max_steps) if o.max_steps else steps

    def update_many(self, rnd: int, downs: dict[int, WeightsDown], data: dict[int, ClientData], states: dict[int, dict]) -> dict[int, Payload]:
        """Every client's E local epochs as one batched computation (``engine.vectorize``): each client
        starts from its own downlink, with its own batch order (the same seeded generator as ``update``),
        step count and optimiser state."""
        runs = []
        starts: dict[int, dict] = {}  # one per distinct downlink (a round's clients usually share one)
        for cid, down in downs.items():
            if id(down) not in starts:
                load_flat_state(self.model, down.weights)
                starts[id(down)] = {k: p.detach().clone() for k, p in self.model.named_parameters()}
            x, y = data[cid].x, data[cid].y
            runs.append(vectorized.ClientRun(starts[id(down)], x, y, generator(self.ctx.seed, "fedavg-client", rnd, cid)))
        params = sum(p.numel() for p in self.model.parameters())
        # float32 state throughout: the trained rows are, bit for bit, what flat_state of the trained model gives
        stacked = all(t.dtype == torch.float32 for _, t in state_tensors(self.model))
        finals: list = [None] * len(runs)
        groups = vectorized.client_groups([len(r.y) for r in runs], params, runs[0].x.shape[1:].numel())
        groups = [part for g in groups for part in vectorized.cache_parts(self.model, g)]  # a plain MLP's calls sized for the cache
        rows = None  # each client's uplink vector (flat_state's layout)
        for group in groups:
            flat, _ = vectorized.train_clients_stacked(self.model, [runs[i] for i in group], self.opts, self.opts.local_epochs, self.opts.batch_size, self.opts.max_steps, train_loss=False)
            if stacked and len(groups) == 1 and params == self.n:
                rows = flat  # flat_state is the parameters, in this order: the rows are the uplinks
            elif stacked:  # flat_state puts the parameters first, in this order: its rows are the uplink's head
                rows = torch.empty(len(runs), self.n) if rows is None else rows
                rows[group, :params] = flat
            else:
                finals_of = _per_client(self.model, flat)
                for i, f in zip(group, finals_of):
                    finals[i] = f
        out: dict[int, Payload] = {}
        loaded = None
        for i, ((cid, down), run) in enumerate(zip(downs.items(), runs)):
            if stacked:
                if params < self.n:  # the buffers (not trained) come from the client's downlink
                    rows[i, params:] = down.weights[params:]
                out[cid] = WeightsUp(rows[i], len(run.y))
                continue
            if down is not loaded:  # the buffers (not trained) come from the client's downlink
                load_flat_state(self.model, down.weights)
                loaded = down
            with torch.no_grad():
                for k, p in self.model.named_parameters():
                    p.copy_(finals[i][k])
            out[cid] = WeightsUp(flat_state(self.model), len(run.y))
        return out


def _per_client(model, flat: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Rows of ``train_clients_stacked``'s result as each client's parameter tensors, in the model's dtypes."""
    named = list(model.named_parameters())
    parts = flat.split([p.numel() for _, p in named], dim=1)
    return [{k: part[c].view_as(p).to(p.dtype) for (k, p), part in zip(named, parts)} for c in range(flat.shape[0])]


class GlobalModelServer(Algorithm):
    """What every method with one global model sent whole does the same way: build it from the
    seed, send it (``configure``), evaluate it, checkpoint it. Subclasses say what comes back
    (``uplink_specs``) and how it moves the model (``aggregate``)."""

    #: its upload (weights or a gradient, with a sample count) averages: a sum serves it
    summation = WeightedMean

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.global_model = ctx.build_model()
        self.aggregator = Aggregator.from_section(self.cfg.section(self.name))

    def configure(self, rnd, client_ids):
        down = WeightsDown(flat_state(self.global_model))  # one frozen payload for all: encoded once
        return {cid: down for cid in client_ids}

    def evaluate(self, x, y):
        return evaluate_model(self.global_model, x, y, self.cfg["eval.batch_size"])

    def state_dict(self):
        return {"model": {k: v.clone() for k, v in self.global_model.state_dict().items()}}

    def load_state_dict(self, state):
        self.global_model.load_state_dict(state["model"])


class FedAvg(GlobalModelServer):
    name = "fedavg"
    client_class = WeightsClient
    CONFIG = sections.FEDAVG

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.n = flat_state(self.global_model).numel()
        self._up_spec = weights_spec(WeightsUp, self.n, "weights", with_samples=True)

    def uplink_specs(self, rnd, cid):
        # the same for every client and round, and asked once per reply: built once
        return {WeightsUp.KIND: self._up_spec}

    def aggregate(self, rnd, replies):
        cids = sorted(replies)
        stack = torch.stack([replies[c].weights for c in cids])
        ns = torch.tensor([float(replies[c].num_samples) for c in cids])
        old = flat_state(self.global_model)
        sec = self.cfg.section("fedavg")
        avg = self.aggregator(stack, ns, reference=old, scratch=True)  # the stack is this call's own
        new = old + sec.server_lr * (avg - old)
        load_flat_state(self.global_model, new)
        return {"update_norm": float((new - old).norm())}


_SEQUENTIAL_UPDATE = WeightsClient.update


class GradientClient(WeightsClient):
    """Client half of FedSGD: one gradient of the local loss at the global weights."""

    section = "fedsgd"

    def update(self, rnd: int, down: WeightsDown, data: ClientData, state: dict) -> Payload:
        load_flat_state(self.model, down.weights)
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        bs = self.opts.batch_size
        if bs and bs < len(data):
            idx = torch.randperm(len(data), generator=generator(self.ctx.seed, "fedsgd-client", rnd, data.cid))[:bs]
            x, y = data.x[idx], data.y[idx]
        else:
            x, y = data.x, data.y
        dev = model_device(self.model)
        F.cross_entropy(self.model(x.to(dev)), y.to(dev)).backward()
        grad = torch.cat([p.grad.reshape(-1).cpu() if p.grad is not None else torch.zeros(p.numel()) for p in self.model.parameters()])
        self.model.zero_grad(set_to_none=True)
        return GradientUp(grad.detach(), len(y))


class FedSGD(GlobalModelServer):
    name = "fedsgd"
    client_class = GradientClient
    CONFIG = sections.FEDSGD

    @classmethod
    def validate(cls, cfg) -> None:
        from featherfl.config import ConfigError

        if cfg["model.norm"] == "batch":
            raise ConfigError("fedsgd sends gradients only, so BatchNorm statistics would never be shared; use --set model.norm=group or none")

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.p = sum(p.numel() for p in self.global_model.parameters())
        self.opt = make_optimizer(self.global_model.parameters(), self.cfg.section("fedsgd"))

    def uplink_specs(self, rnd, cid):
        return {GradientUp.KIND: weights_spec(GradientUp, self.p, "gradient", with_samples=True)}

    def aggregate(self, rnd, replies):
        cids = sorted(replies)
        stack = torch.stack([replies[c].gradient for c in cids])
        ns = torch.tensor([float(replies[c].num_samples) for c in cids])
        g = self.aggregator(stack, ns, scratch=True)  # the stack is this call's own
        i = 0
        for p in self.global_model.parameters():
            p.grad = g[i : i + p.numel()].view_as(p).to(p.device).clone()
            i += p.numel()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return {"gradient_norm": float(g.norm())}

    def state_dict(self):
        return {**super().state_dict(), "optimizer": self.opt.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.opt.load_state_dict(state["optimizer"])
