"""BAFFLE: backprop-free federated learning (Feng et al. 2023, "Does Federated Learning
Really Need Backpropagation?", arXiv 2301.12195).

Clients run forward passes only. Each round the server draws a base seed; the K
perturbation directions eps_k are regenerated from it on both sides (``zo.py``).

Wire, per client per round:
  down  ``baffle.weights``  the flat model + the round's base seed (``downlink = weights``), or
        ``baffle.sync``     the model + server-optimizer state, once, for a replica (``downlink = replay``), or
        ``baffle.replay``   seeds + aggregated scalars of the rounds the client's replica missed
                            (``downlink = replay``; Sec. 3.2: the model update is a function of
                            seeds and scalars, so a client holding the previous model can apply it)
  up    ``baffle.up``       S x K float32 loss differences + the sample count (S = 1 in FedSGD mode):
                            4SK bytes + a header, never a gradient or weights.

Modes:
  fedsgd  one estimate per client per round (Sec. 3.1, Eq. 6); the server averages the
          scalars (shared directions: the average of the estimates is the estimate of the
          averaged scalars) and steps its optimizer (SGD or Adam).
  fedavg  S local zeroth-order SGD steps per round, each on its own mini-batch with its own
          directions seeded by (round, client, step) (Sec. 3.2); the server replays each
          client's trajectory from seeds + scalars to get its end weights, then averages them.

Paper guidelines (Sec. 4.4) are options here: Hardswish instead of ReLU (``baffle.activation``),
no BatchNorm (refused: a perturbed forward pass would also move the running statistics),
an EMA of the server weights for evaluation (``baffle.ema``), clipping (``baffle.clip``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from featherfl.algorithms import zo
from featherfl.algorithms.aggregate import aggregation_fields, combine
from featherfl.algorithms.base import Algorithm, ClientData, ClientHalf, Context, derive_seed, generator
from featherfl.algorithms.training import evaluate_model, make_optimizer
from featherfl.config import Config, ConfigError, Field
from featherfl.models import flat_state, has_batchnorm, load_flat_state
from featherfl.models.vision import ACTIVATIONS
from featherfl.wire import Payload, ScalarSpec, Spec, TensorSpec, encode

MAX_SAMPLES = 10**9
SEED_MAX = 2**62
MAX_DIFF = 1e6


@dataclass(frozen=True)
class WeightsDown(Payload):
    """``downlink = weights``: the model and the round's base seed."""

    KIND = "baffle.weights"
    CATEGORY = "weights"
    weights: torch.Tensor
    seed: int


@dataclass(frozen=True)
class SyncDown(Payload):
    """``downlink = replay``, first contact or history too long: the full replica state."""

    KIND = "baffle.sync"
    CATEGORY = "weights"
    weights: torch.Tensor
    opt_state: torch.Tensor
    opt_step: int
    through: int
    seed: int


@dataclass(frozen=True)
class ReplayDown(Payload):
    """``downlink = replay``: what the replica missed, as seeds + scalars (one entry per aggregated round).

    ``rounds[i]`` had ``contributors[i]`` scalar blocks (1 when the server pre-combined
    shared-direction scalars); block j of the flat ``diffs`` has S x K values, its
    base seed ``seeds[j]`` and weight ``counts[j]``. ``fingerprint`` hashes the
    resulting weights so a replica that drifted fails loudly instead of training
    on the wrong model.
    """

    KIND = "baffle.replay"
    CATEGORY = "seeds"
    diffs: torch.Tensor
    rounds: list
    contributors: list
    precombined: list
    seeds: list
    counts: list
    through: int
    fingerprint: int
    seed: int


@dataclass(frozen=True)
class ScalarsUp(Payload):
    """The whole uplink: ``d``, the S x K float32 loss differences d_k (Eq. 4/5), and the
    number of local samples. The one-letter name keeps the counted header under 128 bytes."""

    KIND = "baffle.up"
    CATEGORY = "scalars"
    d: torch.Tensor
    num_samples: int


def _opts(cfg: Config) -> dict:
    return cfg.section("baffle")


def steps_per_round(o: dict) -> int:
    return o["local_steps"] if o["mode"] == "fedavg" else 1


def model_context(ctx: Context) -> Context:
    """The run's context with BAFFLE's activation (Sec. 4.4: Hardswish) in place of ``model.activation``."""
    act = _opts(ctx.cfg)["activation"]
    if act == "model" or act == ctx.cfg["model.activation"]:
        return ctx
    return Context(ctx.cfg.replace(**{"model.activation": act}), ctx.input_shape, ctx.num_classes, ctx.num_clients, ctx.run_id, ctx.info)


def build_model_checked(ctx: Context):
    model = model_context(ctx).build_model()
    if has_batchnorm(model):
        raise ConfigError("baffle cannot perturb BatchNorm statistics; the model has BatchNorm: use --set model.norm=group or model.norm=none")
    return model


def fingerprint(theta: torch.Tensor) -> int:
    return int.from_bytes(hashlib.blake2b(theta.numpy().tobytes(), digest_size=8).digest(), "little") & (SEED_MAX - 1)


def local_trajectory(
    f: zo.FlatModel, theta: torch.Tensor, batches: list[tuple[torch.Tensor, torch.Tensor]], base_seed: int, o: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """A client's round: per step s, K loss differences at its current weights, then (FedAvg mode)
    a local step w <- w - local_lr * g_s. Returns (end weights, S x K differences)."""
    k, sigma = o["k"], o["sigma"]
    w = theta.clone()
    rows = []
    fedavg = o["mode"] == "fedavg"
    for s, (x, y) in enumerate(batches):
        seeds = [zo.direction_seed(base_seed, s, j) for j in range(k)]
        g = torch.zeros_like(w) if fedavg else None
        rows.append(zo.loss_differences(f, w, x, y, seeds, sigma, o["difference"], accumulate=g))
        if fedavg:
            w.add_(zo.finish_estimate(g, k, sigma, o["clip"]), alpha=-o["local_lr"])
    return w, torch.stack(rows)


def replay_trajectory(theta: torch.Tensor, diffs: torch.Tensor, base_seed: int, o: dict) -> torch.Tensor:
    """The server's (or a replica's) rebuild of :func:`local_trajectory`'s end weights from seeds + scalars."""
    k, sigma = o["k"], o["sigma"]
    w = theta.clone()
    for s in range(diffs.shape[0]):
        seeds = [zo.direction_seed(base_seed, s, j) for j in range(k)]
        w.add_(zo.reconstruct(diffs[s], seeds, w.numel(), sigma, o["clip"]), alpha=-o["local_lr"])
    return w


class ServerModel:
    """The global weights as one flat parameter with its optimizer: the state a replica mirrors.

    FedSGD mode hands the aggregated estimate to a torch optimizer (SGD or Adam); FedAvg
    mode moves toward the average of the replayed client weights by ``server_lr``.
    """

    def __init__(self, theta: torch.Tensor, o: dict):
        self.o = o
        self.theta = torch.nn.Parameter(theta.clone(), requires_grad=False)
        self.opt = make_optimizer([self.theta.requires_grad_(True)], o)
        self.theta.requires_grad_(False)

    def apply(self, entry: dict) -> dict:
        """Apply one round's entry {seeds, counts, diffs (C x S x K), precombined}."""
        o = self.o
        theta = self.theta.data
        seeds, diffs = entry["seeds"], entry["diffs"]
        ns = torch.tensor([float(c) for c in entry["counts"]])
        rule = (o["aggregation"], o["trim_beta"], o["clip_norm"])
        if o["mode"] == "fedavg":
            ends = torch.stack([replay_trajectory(theta, diffs[j], seeds[j], o) for j in range(len(seeds))])
            avg = combine(ends, ns, *rule, reference=theta)
            lr = o["server_lr"]
            norm = float((avg - theta).norm()) * lr
            theta.mul_(1.0 - lr).add_(avg, alpha=lr)
            return {"update_norm": norm}
        numel, k, sigma = theta.numel(), o["k"], o["sigma"]
        dir_seeds = [[zo.direction_seed(s, 0, j) for j in range(k)] for s in seeds]
        if entry["precombined"]:
            g = zo.reconstruct(diffs[0, 0], dir_seeds[0], numel, sigma, o["clip"])
        else:
            gs = torch.stack([zo.reconstruct(diffs[j, 0], dir_seeds[j], numel, sigma) for j in range(len(seeds))])
            g = zo.finish_estimate(combine(gs, ns, *rule), 1, 1.0, o["clip"])
        self.theta.grad = g
        self.opt.step()
        self.theta.grad = None
        return {"estimate_norm": float(g.norm())}

    def opt_tensors(self) -> tuple[torch.Tensor, int]:
        st = self.opt.state.get(self.theta, {})
        flat = [st[key].reshape(-1) for key in sorted(st) if torch.is_tensor(st[key]) and st[key].numel() == self.theta.numel()]
        step = int(st["step"]) if "step" in st else 0
        return (torch.cat(flat) if flat else torch.zeros(0)), step

    def load_opt_tensors(self, flat: torch.Tensor, step: int) -> None:
        self.opt.state.clear()
        if flat.numel() == 0:
            return
        n = self.theta.numel()
        if self.o["optimizer"] == "adam":
            self.opt.state[self.theta] = {"step": torch.tensor(float(step)), "exp_avg": flat[:n].clone(), "exp_avg_sq": flat[n : 2 * n].clone()}
        else:
            self.opt.state[self.theta] = {"momentum_buffer": flat[:n].clone()}


class BaffleClient(ClientHalf):
    """Forward-only client: regenerate directions from seeds, upload loss differences."""

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.model = build_model_checked(ctx)
        self.model.requires_grad_(True)
        self.f = zo.FlatModel(self.model)
        self.model.requires_grad_(False)
        self.o = _opts(ctx.cfg)
        self.n_state = flat_state(self.model).numel()
        self.max_history = 2**26

    def downlink_specs(self, rnd):
        p = self.f.numel
        seed = ScalarSpec("int", 0, SEED_MAX)
        return {
            WeightsDown.KIND: Spec(WeightsDown, {"weights": TensorSpec("float32", (self.n_state,), max_abs=1e6)}, {"seed": seed}),
            SyncDown.KIND: Spec(
                SyncDown,
                {"weights": TensorSpec("float32", (self.n_state,), max_abs=1e6), "opt_state": TensorSpec("float32", (None,), max_elems=2 * p)},
                {"opt_step": ScalarSpec("int", 0, 2**40), "through": ScalarSpec("int", 0, 2**31), "seed": seed},
            ),
            ReplayDown.KIND: Spec(
                ReplayDown,
                {"diffs": TensorSpec("float32", (None,), max_abs=MAX_DIFF, max_elems=self.max_history)},
                {
                    "rounds": ScalarSpec("list[int]", 1, 2**31, max_len=100_000),
                    "contributors": ScalarSpec("list[int]", 1, 100_000, max_len=100_000),
                    "precombined": ScalarSpec("list[int]", 0, 1, max_len=100_000),
                    "seeds": ScalarSpec("list[int]", 0, SEED_MAX, max_len=1_000_000),
                    "counts": ScalarSpec("list[int]", 1, MAX_SAMPLES, max_len=1_000_000),
                    "through": ScalarSpec("int", 0, 2**31),
                    "fingerprint": ScalarSpec("int", 0, SEED_MAX),
                    "seed": seed,
                },
            ),
        }

    def _batches(self, rnd: int, data: ClientData) -> list[tuple[torch.Tensor, torch.Tensor]]:
        bs = self.o["batch_size"]
        out = []
        for s in range(steps_per_round(self.o)):
            if bs and bs < len(data):
                idx = torch.randperm(len(data), generator=generator(self.ctx.seed, "baffle-batch", rnd, data.cid, s))[:bs]
                out.append((data.x[idx], data.y[idx]))
            else:
                out.append((data.x, data.y))
        return out

    def _replica(self, down, state: dict) -> torch.Tensor:
        """Bring the client's replica of the global model up to date (``downlink = replay``)."""
        if isinstance(down, SyncDown):
            load_flat_state(self.model, down.weights)
            state.clear()
            state.update(theta=self.f.get(), opt_state=down.opt_state.clone(), opt_step=down.opt_step, through=down.through)
            return state["theta"]
        if "theta" not in state:
            raise RuntimeError("baffle replay downlink but this client holds no replica")
        server = ServerModel(state["theta"], self.o)
        server.load_opt_tensors(state["opt_state"], state["opt_step"])
        sk = steps_per_round(self.o) * self.o["k"]
        flat = down.diffs
        off = blk = 0
        for rnd, c, pre in zip(down.rounds, down.contributors, down.precombined):
            n = c * sk
            if flat.numel() < off + n or blk + c > len(down.seeds):
                raise RuntimeError("baffle replay downlink is inconsistent")
            entry = {
                "seeds": down.seeds[blk : blk + c],
                "counts": down.counts[blk : blk + c],
                "diffs": flat[off : off + n].view(c, steps_per_round(self.o), self.o["k"]),
                "precombined": bool(pre),
            }
            if rnd > state["through"]:
                server.apply(entry)
            off += n
            blk += c
        if fingerprint(server.theta.data) != down.fingerprint:
            raise RuntimeError("baffle replica diverged from the global model (fingerprint mismatch)")
        opt_state, opt_step = server.opt_tensors()
        state.update(theta=server.theta.data.clone(), opt_state=opt_state, opt_step=opt_step, through=down.through)
        return state["theta"]

    def update(self, rnd, down, data: ClientData, state: dict) -> Payload:
        if isinstance(down, WeightsDown):
            load_flat_state(self.model, down.weights)
            theta = self.f.get()
        else:
            theta = self._replica(down, state)
        _, diffs = local_trajectory(self.f, theta, self._batches(rnd, data), down.seed, self.o)
        return ScalarsUp(diffs, len(data))


class Baffle(Algorithm):
    name = "baffle"
    client_class = BaffleClient
    client_compute = "forward-only"
    CONFIG = {
        "baffle.k": Field("int", 100, "Random directions K per estimate (uplink: 4K bytes per step).", min=1, max=1_000_000),
        "baffle.sigma": Field("float", 1e-4, "Perturbation scale sigma (delta = sigma * eps).", min=0.0, min_exclusive=True),
        "baffle.difference": Field("str", "forward", "forward: K+1 passes; central: 2K passes, lower bias.", choices=("forward", "central")),
        "baffle.mode": Field("str", "fedsgd", "fedsgd: one estimate per client per round; fedavg: local_steps local ZO steps.", choices=("fedsgd", "fedavg")),
        "baffle.local_steps": Field("int", 10, "fedavg mode: local zeroth-order steps S per round.", min=1, max=100_000),
        "baffle.local_lr": Field("float", 0.05, "fedavg mode: client SGD step on each local estimate.", min=0.0, min_exclusive=True),
        "baffle.batch_size": Field("int", 0, "Samples per estimate (0 = all local data).", min=0),
        "baffle.directions": Field("str", "shared", "shared: one seed set for all clients (paper); per-client: independent seeds.", choices=("shared", "per-client")),
        "baffle.downlink": Field("str", "weights", "weights: send the model; replay: send seeds + scalars to clients holding the model.", choices=("weights", "replay")),
        "baffle.optimizer": Field("str", "adam", "fedsgd mode: server optimizer on the estimate.", choices=("sgd", "adam")),
        "baffle.lr": Field("float", 0.03, "fedsgd mode: server learning rate.", min=0.0, min_exclusive=True),
        "baffle.momentum": Field("float", 0.0, "fedsgd mode: server SGD momentum.", min=0.0, max=0.999),
        "baffle.weight_decay": Field("float", 0.0, "fedsgd mode: server weight decay.", min=0.0),
        "baffle.server_lr": Field("float", 1.0, "fedavg mode: step toward the averaged client weights.", min=0.0, min_exclusive=True),
        "baffle.ema": Field("float", 0.0, "Decay of the EMA of server weights used for evaluation (0 = off).", min=0.0, max=0.9999),
        "baffle.clip": Field("float", 0.0, "Clip each estimate to this inf-norm (0 = off).", min=0.0),
        "baffle.activation": Field("str", "hardswish", "Activation of BAFFLE's models ('model' = use model.activation).", choices=("model", *ACTIVATIONS)),
        **aggregation_fields("baffle"),
    }

    @classmethod
    def validate(cls, cfg: Config) -> None:
        if cfg["model.norm"] == "batch":
            raise ConfigError("config key 'model.norm': baffle cannot perturb BatchNorm statistics; use --set model.norm=group or model.norm=none")

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.o = _opts(self.cfg)
        self.global_model = build_model_checked(ctx)
        self.global_model.requires_grad_(True)
        self.f = zo.FlatModel(self.global_model)
        self.server = ServerModel(self.f.get(), self.o)
        self.global_model.requires_grad_(False)
        self.ema = self.server.theta.data.clone() if self.o["ema"] > 0 else None
        self.through = 0
        self.history: dict[int, dict] = {}
        self.history_floor = 0
        self.synced: dict[int, int] = {}
        self.sent: dict[int, int] = {}

    def init_state(self) -> None:
        pass

    def round_seed(self, rnd: int, cid: int) -> int:
        if self.o["directions"] == "shared":
            return derive_seed(self.ctx.seed, "baffle-directions", rnd) % SEED_MAX
        return derive_seed(self.ctx.seed, "baffle-directions", rnd, cid) % SEED_MAX

    def _weights(self) -> torch.Tensor:
        self.f.put(self.server.theta.data)
        return flat_state(self.global_model)

    def configure(self, rnd, client_ids):
        if self.o["downlink"] == "weights":
            w = self._weights()
            return {cid: WeightsDown(w, self.round_seed(rnd, cid)) for cid in client_ids}
        w = self._weights()
        opt_state, opt_step = self.server.opt_tensors()
        fp = fingerprint(self.server.theta.data)
        out = {}
        for cid in client_ids:
            seed = self.round_seed(rnd, cid)
            sync = SyncDown(w, opt_state, opt_step, self.through, seed)
            last = self.synced.get(cid)
            down = sync
            if last is not None and last >= self.history_floor:
                replay = self._replay(last, fp, seed)
                if len(encode(replay)) < len(encode(sync)):
                    down = replay
            self.sent[cid] = self.through
            out[cid] = down
        return out

    def _replay(self, since: int, fp: int, seed: int) -> ReplayDown:
        rounds = [r for r in sorted(self.history) if r > since]
        es = [self.history[r] for r in rounds]
        flat = torch.cat([e["diffs"].reshape(-1) for e in es]) if es else torch.zeros(0)
        return ReplayDown(
            flat,
            rounds,
            [len(e["seeds"]) for e in es],
            [int(e["precombined"]) for e in es],
            [s for e in es for s in e["seeds"]],
            [c for e in es for c in e["counts"]],
            self.through,
            fp,
            seed,
        )

    def uplink_specs(self, rnd, cid):
        shape = (steps_per_round(self.o), self.o["k"])
        return {ScalarsUp.KIND: Spec(ScalarsUp, {"d": TensorSpec("float32", shape, max_abs=MAX_DIFF)}, {"num_samples": ScalarSpec("int", 1, MAX_SAMPLES)})}

    def aggregate(self, rnd, replies):
        cids = sorted(replies)
        diffs = torch.stack([replies[c].d for c in cids])
        counts = [replies[c].num_samples for c in cids]
        shared_sgd = self.o["mode"] == "fedsgd" and self.o["directions"] == "shared"
        if shared_sgd:
            ns = torch.tensor([float(c) for c in counts])
            d = combine(diffs[:, 0], ns, self.o["aggregation"], self.o["trim_beta"], self.o["clip_norm"])
            entry = {"seeds": [self.round_seed(rnd, cids[0])], "counts": [1], "diffs": d.view(1, 1, -1).clone(), "precombined": True}
        else:
            entry = {"seeds": [self.round_seed(rnd, c) for c in cids], "counts": counts, "diffs": diffs, "precombined": False}
        metrics = self.server.apply(entry)
        self.through = rnd
        if self.ema is not None:
            self.ema.mul_(self.o["ema"]).add_(self.server.theta.data, alpha=1 - self.o["ema"])
        if self.o["downlink"] == "replay":
            for c in cids:
                if c in self.sent:
                    self.synced[c] = self.sent[c]
            self.history[rnd] = entry
            self._prune()
        metrics["loss_diff_abs_mean"] = float(diffs.abs().mean())
        return metrics

    def _prune(self) -> None:
        """Keep only the newest history whose scalars fit in the model's size: older catch-ups get weights."""
        budget = self.server.theta.numel()
        total = 0
        for r in sorted(self.history, reverse=True):
            total += self.history[r]["diffs"].numel() + 2 * len(self.history[r]["seeds"])
            if total > budget:
                for old in [q for q in self.history if q <= r]:
                    del self.history[old]
                self.history_floor = max(self.history_floor, r)
                break

    def evaluate(self, x, y):
        self.f.put(self.ema if self.ema is not None else self.server.theta.data)
        return evaluate_model(self.global_model, x, y, self.cfg["eval.batch_size"])

    def state_dict(self):
        opt_state, opt_step = self.server.opt_tensors()
        return {
            "theta": self.server.theta.data.clone(),
            "opt_state": opt_state,
            "opt_step": opt_step,
            "ema": self.ema.clone() if self.ema is not None else torch.zeros(0),
            "through": self.through,
            "history": {str(r): e for r, e in self.history.items()},
            "history_floor": self.history_floor,
            "synced": {str(c): r for c, r in self.synced.items()},
        }

    def load_state_dict(self, state):
        self.server.theta.data.copy_(state["theta"])
        self.server.load_opt_tensors(state["opt_state"], state["opt_step"])
        if self.ema is not None:
            self.ema.copy_(state["ema"])
        self.through = int(state["through"])
        self.history = {int(r): e for r, e in state["history"].items()}
        self.history_floor = int(state["history_floor"])
        self.synced = {int(c): int(r) for c, r in state["synced"].items()}

    def summary_extra(self):
        passes = self.o["k"] + 1 if self.o["difference"] == "forward" else 2 * self.o["k"]
        return {"baffle_k": self.o["k"], "forward_passes_per_estimate": passes, "estimates_per_round": steps_per_round(self.o)}
