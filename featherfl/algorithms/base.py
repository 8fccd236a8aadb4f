"""The algorithm interface: a server half and a client half with typed payloads.

Follows the shape FL frameworks converge on (Flower's Strategy
``configure_train`` / ``aggregate_train``; FedLab's server handler and client
trainer). An algorithm never imports an engine: engines move its payloads.

Server half (``Algorithm``):
    configure(round, client_ids) -> {cid: Payload};
    uplink_specs(round, cid) -> {kind: wire.Spec};
    aggregate(round, {cid: Payload}) -> metrics; evaluate(x, y) -> metrics
Client half (``ClientHalf``):
    downlink_specs(round) -> {kind: wire.Spec};
    update(round, Payload, ClientData, state) -> Payload
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from featherfl.config import Config, ConfigError, Field
from featherfl.models import build_model, count_parameters
from featherfl.wire import Payload, Spec


@dataclass
class Context:
    """What both halves may know about a run: its config and the data's shape (never the data)."""

    cfg: Config
    input_shape: tuple[int, ...]
    num_classes: int
    num_clients: int
    run_id: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    #: the method ignores ``engine.device`` (``Algorithm.runs_on_cpu_only``)
    cpu_only: bool = False

    @property
    def seed(self) -> int:
        return self.cfg["seed"]

    @property
    def device(self) -> torch.device:
        """``engine.device`` resolved on this machine (the CPU for methods that run on the CPU only)."""
        from featherfl.devices import resolve

        if self.cpu_only:
            return torch.device("cpu")
        return resolve(self.cfg["engine.device"])

    def build_model(self, name: str | None = None) -> nn.Module:
        """Build the configured model with the seed-determined initial weights."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            try:
                m = build_model(
                    name or self.cfg["model.name"],
                    self.input_shape,
                    self.num_classes,
                    norm=self.cfg["model.norm"],
                    activation=self.cfg["model.activation"],
                    width=self.cfg["model.width"],
                )
            except (MemoryError, RuntimeError) as e:  # e.g. a huge model.width: a user error, not a crash
                if not isinstance(e, MemoryError) and "allocate" not in str(e):
                    raise
                raise ConfigError(f"config key 'model.width': {self.cfg['model.width']} makes {name or self.cfg['model.name']} too large for this machine's memory") from None
        if self.cfg["model.init"]:
            load_init_weights(m, self.cfg["model.init"])
        return m.to(self.device)


def load_init_weights(model: nn.Module, path: str) -> None:
    """Load a state dict from .safetensors or a weights-only torch file; mismatches are config errors."""
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"config key 'model.init': no file at {p}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p))
        else:
            with warnings.catch_warnings():  # a foreign pickle's protocol warning would break the one-line error
                warnings.simplefilter("ignore")
                sd = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
                sd = sd["model"]
    except Exception as e:  # corrupt or foreign file
        raise ConfigError(f"config key 'model.init': cannot read {p} ({e.__class__.__name__})") from None
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ConfigError(f"config key 'model.init': {p} does not fit the model (missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")


@dataclass
class ClientData:
    cid: int
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int

    def __len__(self) -> int:
        return len(self.y)


class ClientHalf(ABC):
    """What runs on a device. ``state`` is the client's own persistent dict (tensors, numbers)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    @abstractmethod
    def downlink_specs(self, rnd: int) -> dict[str, Spec]: ...

    @abstractmethod
    def update(self, rnd: int, down: Payload, data: ClientData, state: dict) -> Payload: ...

    def evaluate(self, state: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
        """Per-client evaluation, for methods without a global model."""
        raise NotImplementedError

    def can_update_many(self) -> bool:
        """Whether ``update_many`` (a round's clients trained as one batched computation) serves now."""
        return False

    def local_steps(self, rows: int) -> int | None:
        """How many local steps ``update_many`` takes for a client of ``rows`` rows, or None where
        unknown or where it does not matter. A batched call that computes every client for its
        longest client's steps makes engines group clients of similar steps together
        (``featherfl.engines.batched.plan_groups``); one that computes only the clients still
        training answers None (groups are then cut in client order). A cost estimate only: results
        never depend on it beyond which clients share a call."""
        return None

    def summation_around(self, summation: type | None) -> type | None:
        """The ``Algorithm.summation`` a sum of this client's replies follows: the method's own, or
        a feature's around it (a wrapper that changes what the reply holds, e.g. compression)."""
        return summation


class ClientWrapper(ClientHalf):
    """A client half around another one: a cross-cutting feature's device side (FAug's setup,
    simulated attackers, secure aggregation). Every call it does not override goes to ``inner``;
    a wrapper that alters replies one by one says so by answering ``can_update_many`` False."""

    def __init__(self, inner: ClientHalf):
        super().__init__(inner.ctx)
        self.inner = inner

    def __getattr__(self, name: str):  # anything else the inner client offers (e.g. its model)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def downlink_specs(self, rnd: int) -> dict[str, Spec]:
        return self.inner.downlink_specs(rnd)

    def summation_around(self, summation):
        return self.inner.summation_around(summation)

    def update(self, rnd: int, down: Payload, data: ClientData, state: dict) -> Payload:
        return self.inner.update(rnd, down, data, state)

    def can_update_many(self) -> bool:
        return self.inner.can_update_many()

    def local_steps(self, rows: int) -> int | None:
        return self.inner.local_steps(rows)

    def update_many(self, rnd: int, downs: dict, data: dict, states: dict) -> dict:
        return self.inner.update_many(rnd, downs, data, states)

    def evaluate(self, state: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
        return self.inner.evaluate(state, x, y)


class Algorithm(ABC):
    name: ClassVar[str] = ""
    #: This method's config keys, full dotted names (e.g. "fedavg.lr").
    CONFIG: ClassVar[dict[str, Field]] = {}
    #: Whether a global model exists (False: each client's model is evaluated).
    has_global_model: ClassVar[bool] = True
    #: "backprop" or "forward-only": what clients compute.
    client_compute: ClassVar[str] = "backprop"
    #: True for methods whose results rely on CPU arithmetic: they ignore ``engine.device``.
    runs_on_cpu_only: ClassVar[bool] = False
    client_class: ClassVar[type[ClientHalf]]

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.cfg = ctx.cfg

    @classmethod
    def validate(cls, cfg: Config) -> None:
        """Raise ConfigError for combinations this method cannot run."""

    @classmethod
    def memory_needs(cls, cfg: Config, input_shape: tuple, num_classes: int) -> list[tuple[int, str]]:
        """What this method will allocate that the config sizes, estimated before it allocates it:
        ``(bytes, the settings that size it)`` pairs; a run that needs more than the machine has is
        refused with that line (``featherfl.checks``). Nothing by default."""
        return []

    @classmethod
    def work_warnings(cls, cfg: Config) -> list[str]:
        """Lines warning that the config makes a round's client work unusually large. None by default."""
        return []

    #: How the server finishes a round from the sum of its uploads alone (secure aggregation): a
    #: ``featherfl.algorithms.summation.Summation`` subclass, or None when it needs each reply.
    summation: ClassVar[type | None] = None

    def make_client(self) -> ClientHalf:
        return self.client_class(self.ctx)

    @abstractmethod
    def configure(self, rnd: int, client_ids: list[int]) -> dict[int, Payload]: ...

    @abstractmethod
    def uplink_specs(self, rnd: int, cid: int) -> dict[str, Spec]: ...

    @abstractmethod
    def aggregate(self, rnd: int, replies: dict[int, Payload]) -> dict: ...

    def setup_configure(self, rnd: int, client_ids: list[int]) -> dict[int, Payload]:
        """One-time exchanges before training (e.g. FAug's seed upload and generator download).

        The engine calls this at the start of every round with all client ids and runs one
        exchange per non-empty answer, until it answers ``{}`` (the default: no setup).
        """
        return {}

    def setup_uplink_specs(self, rnd: int, cid: int) -> dict[str, Spec]:
        return {}

    def setup_aggregate(self, rnd: int, replies: dict[int, Payload]) -> dict:
        """Consume one setup exchange's replies; must advance so ``setup_configure`` ends."""
        return {}

    def round_configure(self, rnd: int, stage: str, client_ids: list[int]) -> dict[int, Payload]:
        """Extra exchanges inside a round (e.g. secure aggregation's key agreement and unmasking).

        ``stage`` is ``"before"`` (the round's sampled clients, before ``configure``) or
        ``"after"`` (the clients whose training reply was accepted, before ``aggregate``). The
        engine runs one exchange per non-empty answer, counted and validated like every other
        payload, until it answers ``{}`` (the default: none)."""
        return {}

    def round_uplink_specs(self, rnd: int, stage: str, cid: int) -> dict[str, Spec]:
        return {}

    def round_aggregate(self, rnd: int, stage: str, replies: dict[int, Payload]) -> dict:
        """Consume one extra exchange's replies; must advance so ``round_configure`` ends."""
        return {}

    def round_dropout(self, rnd: int, stage: str) -> float:
        """Simulated share of clients that vanish in an extra exchange of ``stage`` (experiments)."""
        return 0.0

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        raise NotImplementedError

    def summarize_client_eval(self, per_client: dict[int, dict]) -> dict:
        """Combine per-client evaluations (methods without a global model)."""
        accs = [m["accuracy"] for m in per_client.values()]
        losses = [m["loss"] for m in per_client.values()]
        return {"accuracy": sum(accs) / len(accs), "loss": sum(losses) / len(losses), "accuracy_min": min(accs), "accuracy_max": max(accs)}

    @abstractmethod
    def state_dict(self) -> dict: ...

    @abstractmethod
    def load_state_dict(self, state: dict) -> None: ...

    def model_parameters(self) -> int:
        return count_parameters(self.global_model) if hasattr(self, "global_model") else 0

    def summary_extra(self) -> dict:
        return {}

    def artifacts(self, run_dir) -> None:
        """Write method-specific files into the run folder at the end of a run."""


class Wrapper(Algorithm):
    """An algorithm around another one: cross-cutting features (FAug, simulated attackers, secure
    aggregation) wrap a method instead of weaving into it. Every hook goes to ``inner`` unless the
    wrapper overrides it, and the engines read the inner method's name and kind. Its device side
    is ``wrap_client``, so the server's chain (``featherfl.assembly``) and a client built without a
    server get the same client wrappers in the same order."""

    def __init__(self, inner: Algorithm):
        super().__init__(inner.ctx)
        self.inner = inner
        self.method: type[Algorithm] = inner.method if isinstance(inner, Wrapper) else type(inner)
        self.name = inner.name
        self.has_global_model = inner.has_global_model
        self.client_compute = inner.client_compute
        self.summation = inner.summation

    @classmethod
    def wrap_client(cls, client: ClientHalf, method: type[Algorithm]) -> ClientHalf:
        """This feature's client wrapper around ``client`` (a client of ``method``); none by default."""
        return client

    def __getattr__(self, name: str):  # e.g. the inner method's global_model
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def make_client(self) -> ClientHalf:
        return self.wrap_client(self.inner.make_client(), self.method)

    def configure(self, rnd, client_ids):
        return self.inner.configure(rnd, client_ids)

    def uplink_specs(self, rnd, cid):
        return self.inner.uplink_specs(rnd, cid)

    def aggregate(self, rnd, replies):
        return self.inner.aggregate(rnd, replies)

    def setup_configure(self, rnd, client_ids):
        return self.inner.setup_configure(rnd, client_ids)

    def setup_uplink_specs(self, rnd, cid):
        return self.inner.setup_uplink_specs(rnd, cid)

    def setup_aggregate(self, rnd, replies):
        return self.inner.setup_aggregate(rnd, replies)

    def round_configure(self, rnd, stage, client_ids):
        return self.inner.round_configure(rnd, stage, client_ids)

    def round_uplink_specs(self, rnd, stage, cid):
        return self.inner.round_uplink_specs(rnd, stage, cid)

    def round_aggregate(self, rnd, stage, replies):
        return self.inner.round_aggregate(rnd, stage, replies)

    def round_dropout(self, rnd, stage):
        return self.inner.round_dropout(rnd, stage)

    def evaluate(self, x, y):
        return self.inner.evaluate(x, y)

    def summarize_client_eval(self, per_client):
        return self.inner.summarize_client_eval(per_client)

    def model_parameters(self) -> int:
        return self.inner.model_parameters()

    def summary_extra(self) -> dict:
        return self.inner.summary_extra()

    def artifacts(self, run_dir) -> None:
        self.inner.artifacts(run_dir)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)
