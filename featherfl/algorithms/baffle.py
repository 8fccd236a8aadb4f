"""BAFFLE: backprop-free federated learning (Feng et al. 2023, "Does Federated Learning
Really Need Backpropagation?", arXiv 2301.12195).

Clients run forward passes only. Each round the server draws a base seed; the K
perturbation directions eps_k are regenerated from it on both sides (``zo.py``).

Wire, per client per round:
  down  ``baffle.weights``  the flat model + the round's base seed (``downlink = weights``), or the
                            replay downlink's ``baffle.sync`` / ``baffle.replay`` (``baffle_replay.py``:
                            seeds + scalars of the rounds a client's replica of the model missed)
  up    ``baffle.up``       S x K float32 loss differences + the sample count (S = 1 in FedSGD mode):
                            4SK bytes + a header, never a gradient or weights.

Modes:
  fedsgd  one estimate per client per round (Sec. 3.1, Eq. 6), the paper's default; the server
          combines the estimates and steps its optimizer (SGD or Adam). One round is one step:
          the paper's epoch of 800 samples at batch 32 is 25 rounds. Shared directions let the
          server average the scalars first (the estimate of the averaged scalars is the
          averaged estimate); per-client directions (as in the paper's code, where each
          client draws its own noise) give K directions per client per step.
  fedavg  S local zeroth-order steps per round with a client optimizer (SGD or Adam), each on
          its own mini-batch with its own directions seeded by (round, client, step) (Sec. 3.2);
          the server replays each client's trajectory from seeds + scalars to get its end
          weights, then averages them.

Paper guidelines (Sec. 4.4) are options here: Hardswish instead of ReLU (``baffle.activation``),
no BatchNorm (refused: a perturbed forward pass would also move the running statistics),
an EMA of the server weights for evaluation (``baffle.ema``, with warm-up), clipping each
estimate by its infinity norm (``baffle.clip``; the paper's code rescales with
``clip_grad_norm_(max_norm=0.3, norm_type=inf)``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch

from featherfl.algorithms import baffle_peft, baffle_pool, sections, zo
from featherfl.algorithms.aggregate import Aggregator
from featherfl.algorithms.baffle_replay import MAX_DIFF, MAX_SAMPLES, SEED_MAX, ReplayLog, RoundEntry, SyncDown, catch_up, fingerprint, sync_state
from featherfl.algorithms.baffle_replay import downlink_specs as replay_specs
from featherfl.algorithms.base import Algorithm, ClientData, ClientHalf, Context
from featherfl.algorithms.summation import Range, WeightedMean, max_weight
from featherfl.seeding import derive_seed, generator
from featherfl.algorithms.training import evaluate_model, torch_optimizer
from featherfl.config import Config, ConfigError, Options, cohort_size
from featherfl.models import flat_state, has_batchnorm, load_flat_state
from featherfl.wire import Payload, ScalarSpec, Spec, TensorSpec


@dataclass(frozen=True)
class WeightsDown(Payload):
    """``downlink = weights``: the model and the round's base seed."""

    KIND = "baffle.weights"
    CATEGORY = "weights"
    weights: torch.Tensor
    seed: int


@dataclass(frozen=True)
class ScalarsUp(Payload):
    """The whole uplink: ``d``, the S x K float32 loss differences d_k (Eq. 4/5), and the
    number of local samples. The one-letter name keeps the counted header under 128 bytes."""

    KIND = "baffle.up"
    CATEGORY = "scalars"
    d: torch.Tensor
    num_samples: int


def _opts(cfg: Config) -> Options:
    """The ``baffle`` options plus the seed pool's root seed (``pool_root``), which both halves derive from the run seed."""
    return cfg.section("baffle").with_values(pool_root=baffle_pool.pool_base(cfg["seed"]))


def dir_seed(o: Options, base: int, step: int, k: int) -> int:
    """Seed of direction k at step ``step`` under a round's base seed: its own seed, or with
    ``seed_pool = N`` one of the pool's N seeds (FedKSeed), picked by the same derivation."""
    if o.seed_pool:
        return baffle_pool.pool_seed(o.pool_root, baffle_pool.pool_index(base, step, k, o.seed_pool))
    return zo.direction_seed(base, step, k)


def steps_per_round(o: Options) -> int:
    return o.local_steps if o.mode == "fedavg" else 1


def model_context(ctx: Context) -> Context:
    """The run's context with BAFFLE's activation (Sec. 4.4: Hardswish) in place of ``model.activation``."""
    act = _opts(ctx.cfg)["activation"]
    if act == "model" or act == ctx.cfg["model.activation"]:
        return ctx
    return dataclasses.replace(ctx, cfg=ctx.cfg.replace(**{"model.activation": act}))


def build_model_checked(ctx: Context):
    if _opts(ctx.cfg)["peft"]:
        from featherfl.algorithms.fedpeft import build_peft_model

        model = build_peft_model(ctx)[0]
    else:
        model = model_context(ctx).build_model()
    if has_batchnorm(model):
        raise ConfigError("baffle cannot perturb BatchNorm statistics; the model has BatchNorm: use --set model.norm=group or model.norm=none")
    return model


def flat_optimizer(param: torch.nn.Parameter, kind: str, lr: float, o: Options, momentum: float = 0.0) -> torch.optim.Optimizer:
    """SGD or Adam over one flat parameter. Weight decay is the L2 term added to the
    estimate inside the optimizer, and Adam's betas are settable: the paper's code uses
    Adam(betas=(0.9, 0.99), weight_decay=5e-4) on the clipped estimate."""
    return torch_optimizer([param], kind, lr, momentum, o.weight_decay, (o.beta1, o.beta2))


class LocalSteps:
    """FedAvg mode: a client's optimizer over its flat weights (``baffle.local_optimizer``).

    It starts fresh each round, so the end weights are a pure function of the round's
    start weights, seeds and scalars, and the server (or a replica) rebuilds them exactly.
    """

    def __init__(self, theta: torch.Tensor, o: Options):
        self.p = torch.nn.Parameter(theta.clone())
        self.opt = flat_optimizer(self.p, o.local_optimizer, o.local_lr, o)

    @property
    def w(self) -> torch.Tensor:
        return self.p.data

    def step(self, g: torch.Tensor) -> None:
        self.p.grad = g
        self.opt.step()
        self.p.grad = None


def local_trajectory(
    f: zo.FlatModel, theta: torch.Tensor, batches: list[tuple[torch.Tensor, torch.Tensor]], base_seed: int, o: Options
) -> tuple[torch.Tensor, torch.Tensor]:
    """A client's round: per step s, K loss differences at its current weights, then (FedAvg mode)
    a local optimizer step on the clipped estimate. Returns (end weights, S x K differences)."""
    k, sigma = o.k, o.sigma
    local = LocalSteps(theta, o) if o.mode == "fedavg" else None
    rows = []
    for s, (x, y) in enumerate(batches):
        seeds = [dir_seed(o, base_seed, s, j) for j in range(k)]
        if local is None:
            rows.append(zo.loss_differences(f, theta, x, y, seeds, sigma, o.difference))
            continue
        g = torch.zeros_like(theta)
        rows.append(zo.loss_differences(f, local.w, x, y, seeds, sigma, o.difference, accumulate=g))
        local.step(zo.finish_estimate(g, k, sigma, o.clip))
    return (theta if local is None else local.w), torch.stack(rows)


def replay_trajectory(theta: torch.Tensor, diffs: torch.Tensor, base_seed: int, o: Options) -> torch.Tensor:
    """The server's (or a replica's) rebuild of :func:`local_trajectory`'s end weights from seeds + scalars."""
    k, sigma = o.k, o.sigma
    local = LocalSteps(theta, o)
    for s in range(diffs.shape[0]):
        seeds = [dir_seed(o, base_seed, s, j) for j in range(k)]
        local.step(zo.reconstruct(diffs[s], seeds, theta.numel(), sigma, o.clip))
    return local.w


class ServerModel:
    """The global weights as one flat parameter with its optimizer: the state a replica mirrors.

    FedSGD mode hands the aggregated estimate to the server optimizer (SGD or Adam);
    FedAvg mode moves toward the average of the replayed client weights by ``server_lr``.
    """

    def __init__(self, theta: torch.Tensor, o: Options, pool: baffle_pool.SeedPoolServer | None = None):
        self.o = o
        self.theta = torch.nn.Parameter(theta.clone())
        self.opt = flat_optimizer(self.theta, o.optimizer, o.lr, o, momentum=o.momentum)
        self.aggregator = Aggregator.from_section(o)
        self.pool = pool

    def apply(self, entry: RoundEntry) -> dict:
        """Apply one round: rebuild the clients' estimates (or trajectories) from seeds + scalars."""
        o = self.o
        theta = self.theta.data
        seeds, diffs = entry.seeds, entry.diffs
        ns = torch.tensor([float(c) for c in entry.counts])
        agg = self.aggregator
        if o.mode == "fedavg":
            ends = torch.stack([replay_trajectory(theta, diffs[j], seeds[j], o) for j in range(len(seeds))])
            avg = agg(ends, ns, reference=theta)
            lr = o.server_lr
            norm = float((avg - theta).norm()) * lr
            theta.mul_(1.0 - lr).add_(avg, alpha=lr)
            return {"update_norm": norm}
        if self.pool is not None:
            return self._apply_pool(entry)
        numel, k, sigma, clip = theta.numel(), o.k, o.sigma, o.clip
        dir_seeds = [[dir_seed(o, s, 0, j) for j in range(k)] for s in seeds]
        if entry.precombined:
            g = zo.reconstruct(diffs[0, 0], dir_seeds[0], numel, sigma, clip)
        else:
            # Each client's estimate is clipped before averaging, as each client clips its own
            # gradient in the paper's code; a robust rule then combines the clipped estimates.
            gs = torch.stack([zo.reconstruct(diffs[j, 0], dir_seeds[j], numel, sigma, clip) for j in range(len(seeds))])
            g = agg(gs, ns)
        self.theta.grad = g
        self.opt.step()
        self.theta.grad = None
        return {"estimate_norm": float(g.norm())}

    def _apply_pool(self, entry: RoundEntry) -> dict:
        """``downlink = pool``: the SGD step -lr * g as scalars along pool entries (the clip factor of
        each estimate computed from its rebuild), added to the pool's coefficients; the weights are
        then rebuilt from W_0 and the coefficients, exactly as every client rebuilds them."""
        o = self.o
        k, sigma, clip, n = o.k, o.sigma, o.clip, o.seed_pool
        numel = self.theta.numel()
        if entry.precombined:
            blocks = [(entry.seeds[0], entry.diffs[0, 0], 1.0)]
        else:
            w = self.aggregator.weights(torch.tensor([float(c) for c in entry.counts]))
            w = (w / w.sum()).tolist()
            blocks = [(entry.seeds[j], entry.diffs[j, 0], w[j]) for j in range(len(entry.seeds))]
        idx, vals = [], []
        for base, d, wj in blocks:
            scale = 1.0
            if clip > 0:
                top = float(zo.reconstruct(d, [dir_seed(o, base, 0, j) for j in range(k)], numel, sigma).abs().max())
                scale = clip / top if top > clip else 1.0
            for j, dj in enumerate(d.tolist()):
                idx.append(baffle_pool.pool_index(base, 0, j, n))
                vals.append(-o.lr * wj * scale * dj / (k * sigma))
        self.pool.add(idx, vals)
        new = self.pool.weights()
        norm = float((new - self.theta.data).norm())
        self.theta.data.copy_(new)
        return {"update_norm": norm, "pool_entries_used": int(torch.count_nonzero(self.pool.coef))}

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
        if self.o.optimizer == "adam":
            self.opt.state[self.theta] = {"step": torch.tensor(float(step)), "exp_avg": flat[:n].clone(), "exp_avg_sq": flat[n : 2 * n].clone()}
        else:
            self.opt.state[self.theta] = {"momentum_buffer": flat[:n].clone()}


def pass_batches(n: int, batch_size: int, first_step: int, steps: int, gen: Callable[[int], torch.Generator]) -> list[torch.Tensor]:
    """Index sets for global steps ``first_step`` .. ``first_step + steps - 1`` of a client.

    Steps walk through the client's data in passes (epochs) without replacement, each
    pass a fresh permutation from ``gen(pass)``, as the paper's data loader does: one
    pass of 800 samples at batch 32 is 25 steps. ``batch_size = 0`` means all the data.
    """
    if batch_size <= 0 or batch_size >= n:
        return [torch.arange(n)] * steps
    per_pass = math.ceil(n / batch_size)
    perms: dict[int, torch.Tensor] = {}
    out = []
    for t in range(first_step, first_step + steps):
        e, pos = divmod(t, per_pass)
        if e not in perms:
            perms[e] = torch.randperm(n, generator=gen(e))
        out.append(perms[e][pos * batch_size : (pos + 1) * batch_size])
    return out


class BaffleClient(ClientHalf):
    """Forward-only client: regenerate directions from seeds, upload loss differences."""

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.model = build_model_checked(ctx)
        self.o = _opts(ctx.cfg)
        self.peft = self.o.peft
        # With a pretrained backbone only the trainable tensors travel; the frozen rest is built here.
        self.n_state = None if self.peft else flat_state(self.model).numel()
        if self.peft or self.o.client_precision != "fp32":
            self.f = baffle_peft.client_flat(self.model, ctx.cfg)
        else:
            self.f = zo.FlatModel(self.model)
        self.n_state = self.n_state or self.f.numel
        # the pool downlink rebuilds the weights from W_0, the seeded initial trainable tensors
        self.theta0 = self.f.get() if self.o.downlink == "pool" else None
        self.cached_head = baffle_peft.uses_cached_head(ctx.cfg)
        self._features: dict[int, torch.Tensor] = {}

    def downlink_specs(self, rnd):
        pool = baffle_pool.downlink_specs(self.o.seed_pool) if self.o.downlink == "pool" else {}
        return {
            WeightsDown.KIND: Spec(WeightsDown, {"weights": TensorSpec("float32", (self.n_state,), max_abs=1e6)}, {"seed": ScalarSpec("int", 0, SEED_MAX)}),
            **replay_specs(self.n_state, self.f.numel),
            **pool,
        }

    def _inputs(self, data: ClientData) -> torch.Tensor:
        """The client's inputs, or (cached head) the frozen backbone's features of them, computed once."""
        if not self.cached_head:
            return data.x
        feats = self._features.get(data.cid)
        if feats is None or len(feats) != len(data):
            feats = baffle_peft.cached_features(self.model, self.f, data.x, self.ctx.cfg["eval.batch_size"])
            self._features[data.cid] = feats
        return feats

    def _batches(self, rnd: int, data: ClientData) -> list[tuple[torch.Tensor, torch.Tensor]]:
        steps = steps_per_round(self.o)
        gen = lambda e: generator(self.ctx.seed, "baffle-batch", data.cid, e)  # noqa: E731
        x = self._inputs(data)
        return [(x[i], data.y[i]) for i in pass_batches(len(data), self.o.batch_size, (rnd - 1) * steps, steps, gen)]

    def _new_replica(self, theta: torch.Tensor, opt_state: torch.Tensor, opt_step: int) -> ServerModel:
        server = ServerModel(theta, self.o)
        server.load_opt_tensors(opt_state, opt_step)
        return server

    def update(self, rnd, down, data: ClientData, state: dict) -> Payload:
        if isinstance(down, baffle_pool.PoolDown):
            theta = baffle_pool.pool_catch_up(down, state, self.theta0, self.o.seed_pool, self.o.pool_root)
        elif isinstance(down, (WeightsDown, SyncDown)):
            if self.peft:
                # the received subset is the unperturbed weights as is: no second copy (it is only read)
                theta = down.weights
            else:
                load_flat_state(self.model, down.weights)
                theta = self.f.get()
            if isinstance(down, SyncDown):
                sync_state(down, theta, state)
        else:
            theta = catch_up(down, state, self._new_replica, steps_per_round(self.o), self.o.k)
        _, diffs = local_trajectory(self.f, theta, self._batches(rnd, data), down.seed, self.o)
        return ScalarsUp(diffs, len(data))


class BaffleMean(WeightedMean):
    """BAFFLE under a sum: the weighted mean of the K loss differences, which the server replays
    like one client's. Directions must be the same for every client, and in fedavg mode the local
    step linear, so that the mean of the scalars replays to the mean of the trajectories."""

    @classmethod
    def compatible_defaults(cls, cfg: Config, name: str) -> dict:
        chosen = super().compatible_defaults(cfg, name)
        if cfg["baffle.mode"] == "fedavg" and cfg["baffle.directions"] != "shared-all":
            chosen["baffle.directions"] = "shared-all"
        return chosen

    @classmethod
    def check(cls, cfg: Config, name: str) -> None:
        super().check(cfg, name)
        if cfg["baffle.mode"] == "fedsgd" and cfg["baffle.directions"] == "per-client":
            raise ConfigError("config key 'baffle.directions': per-client directions need each client's own scalars; use shared with secure aggregation")
        if cfg["baffle.mode"] == "fedavg":
            if cfg["baffle.directions"] != "shared-all":
                raise ConfigError("config key 'baffle.directions': fedavg mode with secure aggregation needs shared-all (every client the same directions, so the sum of the scalars replays to the sum of the trajectories)")
            if cfg["baffle.local_optimizer"] != "sgd" or cfg["baffle.clip"] > 0:
                raise ConfigError("config key 'baffle.local_optimizer': fedavg mode with secure aggregation needs a linear client step (local_optimizer = sgd, clip = 0), so the averaged scalars replay to the averaged weights")

    @classmethod
    def value_range(cls, cfg: Config, name: str) -> Range | None:
        """A loss difference is sigma times a directional derivative (plus O(sigma^2)): declared
        as at most sigma 2^12 in magnitude, needed to sigma 2^-8, an error of at most 2^-9 in each
        directional derivative the server rebuilds, far below the spread of the K directions."""
        w = max_weight(cfg.section(name))
        sigma = cfg["baffle.sigma"]
        return None if w is None else Range(w * sigma * 2.0**12, sigma * 2.0**-8, w)

    def replies_for(self, mean, participants):
        """The replay log records who took part: the mean stands for every participant."""
        return {c: mean for c in participants}


class Baffle(Algorithm):
    name = "baffle"
    summation = BaffleMean
    client_class = BaffleClient
    client_compute = "forward-only"
    #: a client's local trajectory and the server's replay of it must agree bit for bit
    runs_on_cpu_only = True
    CONFIG = sections.BAFFLE

    @classmethod
    def work_warnings(cls, cfg):
        """K perturbed forward passes per estimate, per client: say so when a round may take minutes."""
        k = cfg["baffle.k"]
        steps = cfg["baffle.local_steps"] if cfg["baffle.mode"] == "fedavg" else 1
        per_client = (k + 1) * steps
        clients = cohort_size(cfg)
        if per_client * clients < 1_000_000:
            return []
        return [f"baffle.k={k:,}: about {per_client * clients:,} forward passes per round ({per_client:,} per client); rounds may take minutes (progress is shown per client)"]

    @classmethod
    def validate(cls, cfg: Config) -> None:
        if cfg["model.norm"] == "batch" and not cfg["baffle.peft"]:
            raise ConfigError("config key 'model.norm': baffle cannot perturb BatchNorm statistics; use --set model.norm=group or model.norm=none")
        baffle_peft.validate(cfg)
        if cfg["baffle.downlink"] == "pool":
            if not cfg["baffle.seed_pool"]:
                raise ConfigError("config key 'baffle.downlink': pool needs a seed pool; add --set baffle.seed_pool=N (e.g. 4096)")
            if cfg["baffle.mode"] != "fedsgd" or cfg["baffle.optimizer"] != "sgd" or cfg["baffle.momentum"] or cfg["baffle.weight_decay"] or cfg["baffle.aggregation"] != "mean":
                raise ConfigError(
                    "config key 'baffle.downlink': pool needs a step that is a sum of pool directions: mode=fedsgd, optimizer=sgd, momentum=0, weight_decay=0, aggregation=mean"
                )

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.o = _opts(self.cfg)
        self.global_model = build_model_checked(ctx)
        self.f = zo.FlatModel(self.global_model)
        n = self.o.seed_pool
        self.pool = baffle_pool.SeedPoolServer(self.f.get(), n, self.o.pool_root) if self.o.downlink == "pool" else None
        self.server = ServerModel(self.f.get(), self.o, self.pool)
        self.ema = self.server.theta.data.clone() if self.o.ema > 0 else None
        self.ema_updates = 0
        self.through = 0
        self.replay = ReplayLog(self.server.theta.numel()) if self.o.downlink == "replay" else None

    def round_seed(self, rnd: int, cid: int) -> int:
        """The base seed of ``cid``'s directions. Shared directions exist only in FedSGD mode,
        where every client estimates at the same weights; FedAvg-mode clients walk their
        own trajectories, so their directions are seeded by (round, client, step), unless
        ``directions = shared-all`` (every client the same seeds per step: with a linear client
        optimizer the average of the replayed trajectories is then the replay of the averaged
        scalars, which is all secure aggregation reveals)."""
        if self.o.directions == "shared-all" or (self.o.directions == "shared" and self.o.mode == "fedsgd"):
            return derive_seed(self.ctx.seed, "baffle-directions", rnd) % SEED_MAX
        return derive_seed(self.ctx.seed, "baffle-directions", rnd, cid) % SEED_MAX

    def _weights(self) -> torch.Tensor:
        """The downlink's weights: the trainable subset alone over a pretrained backbone, else the model's state."""
        if self.o.peft:
            return self.server.theta.data.clone()
        self.f.put(self.server.theta.data)
        return flat_state(self.global_model)

    def configure(self, rnd, client_ids):
        if self.pool is not None:
            fp = fingerprint(self.server.theta.data)
            return {cid: self.pool.downlink(cid, self.through, fp, self.round_seed(rnd, cid)) for cid in client_ids}
        w = self._weights()
        if self.replay is None:
            return {cid: WeightsDown(w, self.round_seed(rnd, cid)) for cid in client_ids}
        opt_state, opt_step = self.server.opt_tensors()
        fp = fingerprint(self.server.theta.data)
        return {cid: self.replay.downlink(cid, SyncDown(w, opt_state, opt_step, self.through, self.round_seed(rnd, cid)), fp) for cid in client_ids}

    def uplink_specs(self, rnd, cid):
        shape = (steps_per_round(self.o), self.o.k)
        return {ScalarsUp.KIND: Spec(ScalarsUp, {"d": TensorSpec("float32", shape, max_abs=MAX_DIFF)}, {"num_samples": ScalarSpec("int", 1, MAX_SAMPLES)})}

    def aggregate(self, rnd, replies):
        cids = sorted(replies)
        diffs = torch.stack([replies[c].d for c in cids])
        counts = tuple(replies[c].num_samples for c in cids)
        if self.o.mode == "fedsgd" and self.o.directions in ("shared", "shared-all"):
            ns = torch.tensor([float(c) for c in counts])
            d = self.server.aggregator(diffs[:, 0], ns)
            entry = RoundEntry((self.round_seed(rnd, cids[0]),), (1,), d.view(1, 1, -1).clone(), True)
        else:
            entry = RoundEntry(tuple(self.round_seed(rnd, c) for c in cids), counts, diffs, False)
        metrics = self.server.apply(entry)
        self.through = rnd
        if self.ema is not None:
            # Warm-up (as torch_ema, which the paper's code uses): early on the average
            # follows the weights instead of staying near the random initialisation.
            n = self.ema_updates
            decay = min(self.o.ema, (1 + n) / (10 + n))
            self.ema.mul_(decay).add_(self.server.theta.data, alpha=1 - decay)
            self.ema_updates += 1
        if self.replay is not None:
            self.replay.record(rnd, entry, cids)
        if self.pool is not None:
            self.pool.record(cids)
        metrics["loss_diff_abs_mean"] = float(diffs.abs().mean())
        return metrics

    def evaluate(self, x, y):
        """The EMA weights when ``baffle.ema`` is on (the paper's evaluation), plus the raw weights as ``raw_*``."""
        bs = self.cfg["eval.batch_size"]
        self.f.put(self.server.theta.data)
        raw = evaluate_model(self.global_model, x, y, bs)
        if self.ema is None:
            return raw
        self.f.put(self.ema)
        return {**evaluate_model(self.global_model, x, y, bs), "raw_accuracy": raw["accuracy"], "raw_loss": raw["loss"]}

    def state_dict(self):
        opt_state, opt_step = self.server.opt_tensors()
        return {
            "theta": self.server.theta.data.clone(),
            "opt_state": opt_state,
            "opt_step": opt_step,
            "ema": self.ema.clone() if self.ema is not None else torch.zeros(0),
            "ema_updates": self.ema_updates,
            "through": self.through,
            "replay": self.replay.state_dict() if self.replay is not None else {},
            "pool": self.pool.state_dict() if self.pool is not None else {},
        }

    def load_state_dict(self, state):
        self.server.theta.data.copy_(state["theta"])
        self.server.load_opt_tensors(state["opt_state"], state["opt_step"])
        if self.ema is not None:
            self.ema.copy_(state["ema"])
        self.ema_updates = int(state["ema_updates"])
        self.through = int(state["through"])
        if self.replay is not None:
            self.replay.load_state_dict(state["replay"])
        if self.pool is not None:
            self.pool.load_state_dict(state["pool"])

    def summary_extra(self):
        passes = self.o.k + 1 if self.o.difference == "forward" else 2 * self.o.k
        out = {"baffle_k": self.o.k, "forward_passes_per_estimate": passes, "estimates_per_round": steps_per_round(self.o)}
        out.update(trainable_parameters=self.f.numel, total_parameters=sum(p.numel() for p in self.global_model.parameters()))
        out.update(client_precision=self.o.client_precision, seed_pool=self.o.seed_pool)
        if self.o.peft:
            out["method"] = self.cfg["fedpeft.method"]
        return out
