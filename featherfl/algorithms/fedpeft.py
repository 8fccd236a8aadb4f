"""FedPEFT (Sun et al. 2022, "Conquering the Communication Constraints to Enable Large
Pre-Trained Models in Federated Learning", arXiv 2210.01708).

A pretrained backbone is frozen on every client; only a small set of tensors
(Sec. 3.2: the head, the bias terms, adapters, prompts or LoRA factors; or all
weights for the ``full`` baseline) is trained locally, averaged by the server
with sample weights as in FedAvg, and sent both ways. Nothing else travels:
the downlink and uplink payloads hold exactly those tensors, one named field
each, so the ledger's bytes are the trainable tensors plus the codec header.

Backbones: a Hugging Face text encoder (``model.pretrained`` folder or hub
name; MiniLM offline by default) or the project's ``vit-tiny`` pretrained by
``featherfl pretrain`` (default: pretrained on digits 0-4, see
:mod:`featherfl.models.pretrain`). Differential privacy (``fedpeft.dp``):
sample-level DP-SGD on each client or client-level DP-FedAvg at the server,
both accounted with RDP; noise touches only the trainable tensors.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from featherfl.algorithms import sections
from featherfl.algorithms.aggregate import Aggregator
from featherfl.algorithms.base import Algorithm, ClientData, ClientHalf, Context
from featherfl.algorithms.summation import UPDATE_STEP, Range, WeightedMean, split
from featherfl.seeding import derive_seed, generator
from featherfl.algorithms.training import evaluate_model, make_optimizer, train_epochs
from featherfl.config import ConfigError, cohort_size
from featherfl.data.sources import is_text
from featherfl.devices import model_device
from featherfl.models.peft_modules import apply_method
from featherfl.wire import Payload, ScalarSpec, Spec, TensorSpec

MAX_SAMPLES = 10**9


def build_peft_model(ctx: Context) -> tuple[torch.nn.Module, list[str], str]:
    """The backbone with a fresh seed-initialised head and the method's modules; returns (model, trainable names, backbone label)."""
    cfg = ctx.cfg
    seed = ctx.seed
    if is_text(cfg):
        from featherfl.models.text import build_text_classifier, resolve_name

        model = build_text_classifier(cfg["model.pretrained"], ctx.num_classes, derive_seed(seed, "text-backbone"))
        label = resolve_name(cfg["model.pretrained"])
    else:
        model, label = _vision_backbone(ctx)
    opts = cfg.section("fedpeft")
    try:
        names = apply_method(model, opts.method, opts, derive_seed(seed, "peft-modules"))
    except ValueError as e:
        raise ConfigError(f"fedpeft.method={opts['method']}: {e}") from None
    return model, names, label


def _vision_backbone(ctx: Context) -> tuple[torch.nn.Module, str]:
    from featherfl.models.pretrain import default_backbone, load_backbone

    name = ctx.cfg["model.pretrained"]
    if name.startswith(("timm:", "torchvision:")):
        raise ConfigError(
            f"config key 'model.pretrained': {name!r}: hub vision weights need an online machine with timm/torchvision and "
            "inputs at the model's resolution; offline, make a backbone with `featherfl pretrain --out PATH` and pass that PATH"
        )
    path = name or str(default_backbone(ctx.cfg))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(ctx.seed, "fedpeft-head"))
        model, meta = load_backbone(path, ctx.num_classes, ctx.input_shape)
    return model, f"{path} ({meta.get('source', 'source classes ' + str(meta.get('source_classes')))})"


def field_name(param: str) -> str:
    """A payload field per trainable tensor: the parameter name with '.' -> '__' (identifiers, reversible)."""
    return param.replace(".", "__")


def make_payloads(names: list[str], with_epsilon: bool) -> tuple[type, type]:
    """Payload classes whose tensor fields are exactly the trainable tensors, by name."""
    fields = [field_name(n) for n in names]
    if len(set(fields)) != len(fields) or any(not f.isidentifier() or "____" in f for f in fields):
        raise ConfigError("fedpeft: trainable parameter names cannot be mapped to payload fields")
    tensors = [(f, torch.Tensor) for f in fields]
    down = dataclasses.make_dataclass("PeftDown", tensors, bases=(Payload,), frozen=True, namespace={"KIND": "fedpeft.down", "CATEGORY": "weights"})
    extra = [("num_samples", int)] + ([("epsilon", float)] if with_epsilon else [])
    up = dataclasses.make_dataclass("PeftUp", tensors + extra, bases=(Payload,), frozen=True, namespace={"KIND": "fedpeft.up", "CATEGORY": "weights"})
    return down, up


class _PeftShared:
    """What both halves build the same way: the model, its trainable tensors and the payload classes."""

    def _setup(self, ctx: Context) -> None:
        self.opts = ctx.cfg.section("fedpeft")
        self.model, self.names, self.backbone = build_peft_model(ctx)
        self.model.to(ctx.device)
        self.params = dict(self.model.named_parameters())
        self.Down, self.Up = make_payloads(self.names, self.opts.dp == "sample")

    def trainable(self) -> dict[str, torch.Tensor]:
        return {n: self.params[n].detach().cpu().clone() for n in self.names}

    def flat(self) -> torch.Tensor:
        return torch.cat([self.params[n].detach().reshape(-1).float() for n in self.names]).cpu()

    @torch.no_grad()
    def load_flat(self, vec: torch.Tensor) -> None:
        i = 0
        for n in self.names:
            p = self.params[n]
            p.copy_(vec[i : i + p.numel()].view_as(p))
            i += p.numel()

    @torch.no_grad()
    def load_payload(self, payload: Payload) -> None:
        for n in self.names:
            self.params[n].copy_(getattr(payload, field_name(n)))

    def tensor_specs(self) -> dict[str, TensorSpec]:
        return {field_name(n): TensorSpec("float32", tuple(self.params[n].shape), max_abs=1e6) for n in self.names}


class PeftClient(ClientHalf, _PeftShared):
    """Client half: load the received trainable tensors, train them locally (E epochs), send them back."""

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._setup(ctx)
        self._features: dict[int, torch.Tensor] = {}
        self._noise: dict[int, float] = {}

    def downlink_specs(self, rnd):
        return {self.Down.KIND: Spec(self.Down, self.tensor_specs())}

    def update(self, rnd: int, down: Payload, data: ClientData, state: dict) -> Payload:
        self.load_payload(down)
        o = self.opts
        gen = generator(self.ctx.seed, "fedpeft-client", rnd, data.cid)
        extra = {}
        if o.dp == "sample":
            extra["epsilon"] = self._dp_sgd(rnd, data, state, gen)
        elif o.method == "head" and o.cache_features:
            feats = self.features(data)
            opt = make_optimizer(self.model.head.parameters(), o)
            train_epochs(self.model.head, feats, data.y, opt, o.local_epochs, o.batch_size, gen, o.max_steps)
        else:
            opt = make_optimizer(self.model.parameters(), o)
            train_epochs(self.model, data.x, data.y, opt, o.local_epochs, o.batch_size, gen, o.max_steps)
        return self.Up(**{field_name(n): t for n, t in self.trainable().items()}, num_samples=len(data), **extra)

    @torch.no_grad()
    def features(self, data: ClientData) -> torch.Tensor:
        """Backbone features of the client's data, computed once: the backbone is frozen and deterministic (FedPEFT ``head``)."""
        f = self._features.get(data.cid)
        if f is None or len(f) != len(data):
            self.model.eval()
            bs = self.ctx.cfg["eval.batch_size"]
            dev = model_device(self.model)
            f = torch.cat([self.model.features(data.x[i : i + bs].to(dev)) for i in range(0, len(data), bs)])
            self._features[data.cid] = f
        return f

    def _steps_per_round(self, n: int) -> tuple[int, float]:
        o = self.opts
        bs = o.batch_size or n
        steps = o.local_epochs * math.ceil(n / bs)
        if o.max_steps:
            steps = min(steps, o.max_steps)
        return steps, min(1.0, bs / n)

    def _dp_sgd(self, rnd: int, data: ClientData, state: dict, gen: torch.Generator) -> float:
        """Sample-level DP-SGD; returns this client's epsilon so far (its accountant lives in its state)."""
        from featherfl.privacy.accountant import epsilon, noise_for_epsilon
        from featherfl.privacy.dpsgd import dp_sgd_epochs

        o = self.opts
        steps, q = self._steps_per_round(len(data))
        noise = o.dp_noise
        if o.dp_target_epsilon > 0:
            if data.cid not in self._noise:
                self._noise[data.cid] = noise_for_epsilon(o.dp_target_epsilon, o.dp_delta, q, steps * self.ctx.cfg["rounds"])
            noise = self._noise[data.cid]
        opt = make_optimizer(self.model.parameters(), o)
        dev = model_device(self.model)
        dp_sgd_epochs(self.model, self.names, data.x.to(dev), data.y.to(dev), opt, steps, q, o.dp_clip, noise, gen)
        state["dp_steps"] = int(state.get("dp_steps", 0)) + steps
        state["dp_rate"] = q
        state["dp_noise"] = noise
        return epsilon([(noise, q, state["dp_steps"])], o.dp_delta)


class PeftMean(WeightedMean):
    """FedPEFT under a sum: the weighted mean of the trainable tensors' updates. With client-level
    DP (``dp = client``) a client clips its own update to ``dp_clip`` and sends ``[clipped update,
    1, clipped?]``; the server divides the sum by the expected number of participants and adds the
    Gaussian noise (``FedPEFT.aggregate_clipped_sum``), as DP-FedAvg does without a sum. Under
    DP-SGD (``dp = sample``) each client's epsilon travels in the clear: the server keeps the largest."""

    def __init__(self, ctx, name: str, server=None):
        super().__init__(ctx, name, server)
        self.dp_client = self.opts.dp == "client"

    def summand(self, rnd, reply, down, state):
        if not self.dp_client:
            return super().summand(rnd, reply, down, state)
        v = self.update_vector(reply, down)
        clear = [float(reply.epsilon)] if hasattr(reply, "epsilon") else []
        norm = float(v.norm())
        clip = self.opts.dp_clip
        if norm > clip:
            v = v * (clip / norm)
        return np.concatenate([v.numpy(), [1.0, 1.0 if norm > clip else 0.0]]), clear

    @classmethod
    def value_range(cls, cfg, name):
        """Under client-level DP every coordinate of a clipped update is at most ``dp_clip``."""
        o = cfg.section(name)
        if o["dp"] == "client":
            return Range(o["dp_clip"], o["dp_clip"] * UPDATE_STEP, 1)
        return super().value_range(cfg, name)

    def count_entries(self):
        return 2 if self.dp_client else 1

    def dim(self, rnd, cid):
        return self.update_dim(rnd, cid) + (2 if self.dp_client else 1)

    def clear_len(self):
        return 1 if self.opts.dp == "sample" else 0

    def finish(self, rnd, total, clear, participants):
        if self.dp_client:
            return self.server.aggregate_clipped_sum(rnd, total, participants)
        return super().finish(rnd, total, clear, participants)


class FedPEFT(Algorithm, _PeftShared):
    name = "fedpeft"
    summation = PeftMean
    client_class = PeftClient
    CONFIG = sections.FEDPEFT

    @classmethod
    def validate(cls, cfg) -> None:
        if cfg["fedpeft.dp"] == "client" and cfg["fedpeft.aggregation"] != "mean":
            raise ConfigError("config key 'fedpeft.aggregation': client-level DP uses its own clipped mean; expected mean with fedpeft.dp=client")
        if cfg["fedpeft.dp"] != "none" and cfg["fedpeft.dp_noise"] <= 0 and cfg["fedpeft.dp_target_epsilon"] <= 0:
            raise ConfigError("config key 'fedpeft.dp_noise': got 0 with fedpeft.dp on, expected > 0 or set fedpeft.dp_target_epsilon")
        if cfg["fedpeft.method"] == "lora" and cfg["fedpeft.lora_targets"] == ["qkv"] and is_text(cfg):
            raise ConfigError("config key 'fedpeft.lora_targets': text encoders name their projections query, key, value")

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self._setup(ctx)
        self.global_model = self.model
        self.client_eps: dict[int, float] = {}
        self.dp_rounds = 0
        self.server_noise = self._server_noise()
        self.aggregator = Aggregator.from_section(self.opts)

    def _expected_clients(self) -> int:
        return cohort_size(self.cfg, self.ctx.num_clients)

    def _server_noise(self) -> float:
        o = self.opts
        if o.dp != "client":
            return 0.0
        if o.dp_target_epsilon > 0:
            from featherfl.privacy.accountant import noise_for_epsilon

            q = self._expected_clients() / self.ctx.num_clients
            return noise_for_epsilon(o.dp_target_epsilon, o.dp_delta, q, self.cfg["rounds"])
        return o.dp_noise

    def configure(self, rnd, client_ids):
        down = self.Down(**{field_name(n): t for n, t in self.trainable().items()})
        return {cid: down for cid in client_ids}

    def uplink_specs(self, rnd, cid):
        scalars = {"num_samples": ScalarSpec("int", 1, MAX_SAMPLES)}
        if self.opts.dp == "sample":
            scalars["epsilon"] = ScalarSpec("float", 0.0, 1e9)
        return {self.Up.KIND: Spec(self.Up, self.tensor_specs(), scalars)}

    def aggregate(self, rnd, replies):
        o = self.opts
        cids = sorted(replies)
        old = self.flat()
        stack = torch.stack([torch.cat([getattr(replies[c], field_name(n)).reshape(-1) for n in self.names]) for c in cids])
        metrics: dict = {}
        if o.dp == "client":
            from featherfl.privacy.client_level import dp_fedavg_update

            step, metrics = dp_fedavg_update(stack - old, o.dp_clip, self.server_noise, self._expected_clients(), generator(self.ctx.seed, "dp-server", rnd))
            self.dp_rounds += 1
        else:
            ns = torch.tensor([float(replies[c].num_samples) for c in cids])
            step = self.aggregator(stack, ns, reference=old) - old
        if o.dp == "sample":
            for c in cids:
                self.client_eps[c] = max(self.client_eps.get(c, 0.0), float(replies[c].epsilon))
        new = old + o.server_lr * step
        self.load_flat(new)
        metrics["update_norm"] = float((new - old).norm())
        eps = self.epsilon()
        if eps is not None:
            metrics["dp_epsilon"] = eps
        return metrics

    def aggregate_clipped_sum(self, rnd: int, total: np.ndarray, participants: list[int]) -> dict:
        """Client-level DP from a sum (``PeftMean``): ``total`` is ``[sum of clipped updates, clients, clipped clients]``."""
        o = self.opts
        n = total.shape[0] - 2
        expected = self._expected_clients()
        std = self.server_noise * o.dp_clip / expected
        parts = split(total[:n], next(iter(self.uplink_specs(rnd, participants[0]).values())))
        summed = torch.cat([parts[field_name(name)].reshape(-1) for name in self.names]).to(torch.float32)
        noisy = summed / expected + std * torch.randn(summed.shape, generator=generator(self.ctx.seed, "dp-server", rnd))
        old = self.flat()
        new = old + o.server_lr * noisy
        self.load_flat(new)
        self.dp_rounds += 1
        out = {"dp_clipped_fraction": float(total[n + 1]) / max(1, len(participants)), "update_norm": float((new - old).norm())}
        eps = self.epsilon()
        if eps is not None:
            out["dp_epsilon"] = eps
        return out

    def epsilon(self) -> float | None:
        """The run's guarantee so far: the largest client epsilon (sample) or the server accountant's (client)."""
        o = self.opts
        if o.dp == "sample":
            return max(self.client_eps.values(), default=0.0)
        if o.dp == "client":
            from featherfl.privacy.accountant import epsilon

            q = self._expected_clients() / self.ctx.num_clients
            return epsilon([(self.server_noise, q, self.dp_rounds)], o.dp_delta)
        return None

    def evaluate(self, x, y):
        return evaluate_model(self.global_model, x, y, self.cfg["eval.batch_size"])

    def state_dict(self):
        return {
            "trainable": self.trainable(),
            "client_eps": {str(k): v for k, v in self.client_eps.items()},
            "dp_rounds": self.dp_rounds,
        }

    def load_state_dict(self, state):
        with torch.no_grad():
            for n in self.names:
                self.params[n].copy_(state["trainable"][n])
        self.client_eps = {int(k): float(v) for k, v in state["client_eps"].items()}
        self.dp_rounds = int(state["dp_rounds"])

    def summary_extra(self) -> dict:
        total = sum(p.numel() for p in self.params.values())
        n = sum(self.params[k].numel() for k in self.names)
        out = {
            "model": "hf-encoder" if is_text(self.cfg) else "vit-tiny",
            "method": self.opts.method,
            "backbone": self.backbone,
            "trainable_parameters": n,
            "trainable_tensors": len(self.names),
            "total_parameters": total,
            "trainable_share": n / total,
            "dp": self.opts.dp,
        }
        if self.opts.dp != "none":
            out.update({"dp_epsilon": self.epsilon(), "dp_delta": self.opts.dp_delta, "dp_clip": self.opts.dp_clip})
            if self.opts.dp == "client":
                out["dp_noise_multiplier"] = self.server_noise
        return out
