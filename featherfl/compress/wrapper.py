"""``Compress(inner)``: uplink compression around any method whose upload is dense float tensors.

The client half runs the method's update unchanged, takes each tensor of the reply as an update
(its difference from the downlinked tensor of the same name and shape, e.g. FedAvg's weights, or
the tensor itself, e.g. FedSGD's gradient), adds its error-feedback residual, compresses it, and
keeps what was not delivered as the new residual (per-client state, saved in checkpoints like
every client's state). The reply travels as one ``compress.up`` payload: the encoding as a uint8
tensor plus the method's own scalars (e.g. ``num_samples``). The server validates the encoding
while decoding it (a hostile one is a counted rejection), rebuilds the method's own reply, and
hands it to the method's ``aggregate``. Applicability is read from the method's uplink specs.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
import torch

from featherfl.algorithms.base import Algorithm, ClientData, ClientHalf, ClientWrapper, Context, Wrapper
from featherfl.compress import settings as settings_from
from featherfl.compress import downlink
from featherfl.compress.codecs import Codec, Settings
from featherfl.compress.summed import compose
from featherfl.config import ConfigError
from featherfl.wire import Payload, PayloadError, Spec, TensorSpec

KIND = "compress.up"
#: where the wrapped method's own client state lives inside the client's state
METHOD_STATE = "method"
#: this wrapper's client state: the error-feedback residual per field and PowerSGD's Q per tensor
STATE = "compress"
DENSE_CATEGORIES = ("weights", "gradients")


@lru_cache(maxsize=32)
def payload_class(scalars: tuple[str, ...], category: str) -> type:
    """The compressed reply: the encoding, plus the method's own scalar fields by name."""
    fields = [("data", torch.Tensor)] + [(n, object) for n in scalars]
    return dataclasses.make_dataclass("CompressedUp", fields, bases=(Payload,), frozen=True, namespace={"KIND": KIND, "CATEGORY": category})


def applicability(name: str, specs: dict[str, Spec], method: str) -> tuple[str, Spec]:
    """The one uplink kind to compress, or a one-line ConfigError saying why there is none."""
    if len(specs) != 1:
        raise ConfigError(f"config key 'compress.method': {name} uploads {len(specs)} kinds of payload ({', '.join(sorted(specs))}); {method} compresses a single dense update")
    kind, spec = next(iter(specs.items()))
    category = getattr(spec.cls, "CATEGORY", "")
    tensors = ", ".join(f"{n} {ts.dtype}{list(ts.shape)}" for n, ts in sorted(spec.tensors.items()))
    if category not in DENSE_CATEGORIES or not spec.tensors or any(ts.dtype != "float32" or None in ts.shape for ts in spec.tensors.values()):
        raise ConfigError(
            f"config key 'compress.method': {name} uploads {category or 'nothing'} ({tensors or 'no tensors'}), not dense weights or gradients, so there is nothing for {method} to compress; use it with fedavg, fedsgd or fedpeft"
        )
    return kind, spec


def summed_mode(cfg) -> bool:
    """Whether a secure aggregation outside this wrapper sums the replies (then they travel
    uncompressed to it, and its summation compresses them)."""
    return cfg.get("secagg.protocol", "off") != "off"


def model_shapes(ctx: Context) -> tuple[list, list]:
    """The configured model's layer shapes: (state tensors, parameters), in flat-vector order."""
    from featherfl.models import state_tensors

    m = ctx.build_model()
    return [(n, tuple(t.shape)) for n, t in state_tensors(m)], [(n, tuple(p.shape)) for n, p in m.named_parameters()]


class Layouts:
    """``layout_for`` with the model built at most once per half (and only for a flat field)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.models: tuple[list, list] | None = None
        self.cache: dict[tuple, list] = {}

    def __call__(self, shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...]]]:
        key = tuple(sorted(shapes.items()))
        if key not in self.cache:
            if self.models is None and any(len(s) == 1 for s in shapes.values()):
                self.models = model_shapes(self.ctx)
            self.cache[key] = layout_for(self.models or ([], []), shapes)
        return self.cache[key]


def layout_for(models: tuple[list, list], shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, tuple[int, ...]]]:
    """The tensors the codec sees, field by field (sorted): a flat vector holding the whole model
    (FedAvg's state, FedSGD's gradient) is split into the model's own layers, so per-layer
    statistics and PowerSGD's matrices follow the model; any other field is one tensor."""
    out: list[tuple[str, tuple[int, ...]]] = []
    for name in sorted(shapes):
        shape = tuple(shapes[name])
        layers = None
        if len(shape) == 1:
            for candidate in models:
                if candidate and sum(int(np.prod(s)) for _, s in candidate) == shape[0]:
                    layers = candidate
                    break
        out += [(f"{name}/{layer}", s) for layer, s in layers] if layers else [(name, shape)]
    return out


def _split(layout, name: str, x: torch.Tensor) -> list[np.ndarray]:
    flat = x.detach().to(torch.float32).reshape(-1).cpu().numpy()
    parts, i = [], 0
    for key, shape in layout:
        if key == name or key.startswith(name + "/"):
            n = int(np.prod(shape))
            parts.append(flat[i : i + n].reshape(shape))
            i += n
    return parts


def _reference(down: Payload | None, name: str, like: torch.Tensor) -> torch.Tensor | None:
    ref = getattr(down, name, None) if down is not None else None
    if isinstance(ref, torch.Tensor) and ref.shape == like.shape and ref.is_floating_point():
        return ref.detach().to(torch.float32).cpu()
    return None


def _dense(reply: Payload) -> bool:
    ts = reply.tensor_fields()
    return reply.CATEGORY in DENSE_CATEGORIES and bool(ts) and all(t.dtype == torch.float32 for t in ts.values())


class CompressClient(ClientWrapper):
    """The client half: the method's update, then error feedback and compression of its reply."""

    def __init__(self, inner: ClientHalf, settings: Settings):
        super().__init__(inner)
        self.settings = settings
        self.codec = Codec(settings)
        self.layouts = Layouts(inner.ctx)
        self.downlink = inner.ctx.cfg["compress.downlink"] == "same"
        #: under secure aggregation the reply goes out as it is, and the sum compresses it (``summed.py``)
        self.summed = summed_mode(inner.ctx.cfg)

    def summation_around(self, summation):
        inner = self.inner.summation_around(summation)
        return compose(inner, self.settings.method, Layouts) if self.summed else inner

    def downlink_specs(self, rnd):
        specs = self.inner.downlink_specs(rnd)
        if not self.downlink:
            return specs
        target = next((s for s in specs.values() if getattr(s.cls, "CATEGORY", "") == "weights" and not s.scalars and s.tensors and all(ts.dtype == "float32" and None not in ts.shape for ts in s.tensors.values())), None)
        if target is None:
            return specs
        layout = self.layouts({n: tuple(ts.shape) for n, ts in target.tensors.items()})

        def receive(**values) -> Payload:
            payload = downlink.CompressedDown(**values)
            object.__setattr__(payload, "decoded", (target.cls, layout, self.codec.decode(payload.data.numpy().tobytes(), layout, rnd, -1)))
            return payload

        return {**specs, downlink.KIND: downlink.down_spec(receive, sum(int(np.prod(s)) for _, s in layout), len(layout))}

    def _open(self, rnd: int, down: Payload, state: dict) -> Payload:
        """The method's downlink: the replica plus a compressed difference, or a dense one kept as the replica."""
        if not self.downlink:
            return down
        mine = state.setdefault(STATE, {"residual": {}, "powersgd": {}})
        if isinstance(down, downlink.CompressedDown):
            if "replica" not in mine or mine.get("replica_round") != down.base_round:
                raise RuntimeError(f"compressed downlink for the round-{down.base_round} replica, but this client holds round {mine.get('replica_round')}'s")
            cls, layout, decoded = down.decoded
            replica = downlink.add_decoded(mine["replica"], layout, decoded)
            mine["replica"], mine["replica_round"] = replica, rnd
            return cls(**{n: t.clone() for n, t in replica.items()})
        fields = downlink.dense_fields(down)
        if fields is not None:
            mine["replica"], mine["replica_round"] = fields, rnd
        return down

    def update(self, rnd: int, down: Payload, data: ClientData, state: dict) -> Payload:
        down = self._open(rnd, down, state)
        reply = self.inner.update(rnd, down, data, state.setdefault(METHOD_STATE, {}))
        return self.compress(rnd, data.cid, down, reply, state)

    def update_many(self, rnd: int, downs: dict, data: dict, states: dict) -> dict:
        downs = {c: self._open(rnd, d, states[c]) for c, d in downs.items()}
        replies = self.inner.update_many(rnd, downs, data, {c: states[c].setdefault(METHOD_STATE, {}) for c in downs})
        return {c: self.compress(rnd, c, downs[c], replies[c], states[c]) for c in downs}

    def evaluate(self, state, x, y):
        return self.inner.evaluate(state.setdefault(METHOD_STATE, {}), x, y)

    def compress(self, rnd: int, cid: int, down: Payload, reply: Payload, state: dict) -> Payload:
        """The reply as sent: its update (plus the residual) compressed; the residual updated."""
        if self.summed or not _dense(reply):  # summed: compressed by the sum; FAug's seeds: not an update
            return reply
        tensors = reply.tensor_fields()
        layout = self.layouts({n: tuple(t.shape) for n, t in tensors.items()})
        mine = state.setdefault(STATE, {"residual": {}, "powersgd": {}})
        ef = self.settings.error_feedback
        updates, segments = {}, []
        for name in sorted(tensors):
            t = tensors[name].detach().to(torch.float32).cpu()
            ref = _reference(down, name, t)
            u = t - ref if ref is not None else t.clone()
            if ef and name in mine["residual"]:
                u = u + mine["residual"][name].reshape(u.shape)
            updates[name] = u
            segments += _split(layout, name, u)
        blob, decoded = self.codec.encode(layout, segments, rnd, cid, mine["powersgd"])
        if ef:
            for name, u in updates.items():
                got = [d for (key, _), d in zip(layout, decoded) if key == name or key.startswith(name + "/")]
                sent = torch.from_numpy(np.concatenate([d.reshape(-1) for d in got])).reshape(u.shape)
                mine["residual"][name] = (u - sent).contiguous()
        scalars = {f.name: getattr(reply, f.name) for f in dataclasses.fields(reply) if f.name not in tensors}
        cls = payload_class(tuple(sorted(scalars)), reply.CATEGORY)
        return cls(data=torch.frombuffer(bytearray(blob), dtype=torch.uint8), **scalars)


class Compress(Wrapper):
    """The server half: decode (validating) each compressed reply, rebuild the method's own reply,
    and aggregate with the method's own rule; every other call goes to ``inner`` unchanged."""

    def __init__(self, inner: Algorithm):
        super().__init__(inner)
        self.settings = settings_from(self.cfg)
        self.codec = Codec(self.settings)
        self.layouts = Layouts(inner.ctx)
        applicability(inner.name, inner.uplink_specs(1, 0), self.settings.method)
        self.vote = self.cfg["compress.sign_aggregation"] == "vote"
        self.sent: dict[int, Payload] = {}  # the method's own downlinks: replies are rebuilt on them
        self.broadcast = downlink.Broadcast(self.codec, self.layouts) if self.cfg["compress.downlink"] == "same" else None
        self.summed = summed_mode(self.cfg)
        if self.summed:
            self.summation = compose(inner.summation, self.settings.method, Layouts)

    @classmethod
    def wrap_client(cls, client: ClientHalf, method) -> ClientHalf:
        return CompressClient(client, settings_from(client.ctx.cfg))

    def configure(self, rnd, client_ids):
        self.sent = self.inner.configure(rnd, client_ids)
        return self.broadcast.configure(rnd, self.sent) if self.broadcast is not None else self.sent

    def uplink_specs(self, rnd, cid):
        if self.summed:  # the method's own reply, which the sum compresses
            return self.inner.uplink_specs(rnd, cid)
        kind, spec = applicability(self.inner.name, self.inner.uplink_specs(rnd, cid), self.settings.method)
        layout = self.layouts({n: tuple(ts.shape) for n, ts in spec.tensors.items()})
        dense = sum(int(np.prod(s)) for _, s in layout)
        cls = payload_class(tuple(sorted(spec.scalars)), spec.cls.CATEGORY)

        def receive(**values) -> Payload:
            payload = cls(**values)
            object.__setattr__(payload, "rebuilt", self._rebuild(rnd, cid, spec, layout, payload))
            return payload

        # an encoding is never larger than the dense float32 update plus a few bytes a tensor
        bound = 8 * dense + 16 * len(layout) + 64
        return {KIND: Spec(receive, {"data": TensorSpec("uint8", (None,), max_elems=bound)}, spec.scalars, max_bytes=spec.max_bytes)}

    def _rebuild(self, rnd: int, cid: int, spec: Spec, layout, payload: Payload) -> Payload:
        """The method's own reply from a compressed one, checked against the method's spec."""
        decoded = self.codec.decode(payload.data.numpy().tobytes(), layout, rnd, cid)
        down = self.sent.get(cid)
        values = {}
        for name, ts in spec.tensors.items():
            got = [d for (key, _), d in zip(layout, decoded) if key == name or key.startswith(name + "/")]
            v = torch.from_numpy(np.concatenate([d.reshape(-1) for d in got])).reshape(ts.shape)
            ref = _reference(down, name, v)
            v = v + ref if ref is not None else v
            if not bool(torch.isfinite(v).all()):
                raise PayloadError("non-finite", f"{name} after decompression")
            if ts.max_abs is not None and v.numel() and float(v.abs().max()) > ts.max_abs:
                raise PayloadError("out-of-range", f"{name}: |x| > {ts.max_abs:g} after decompression")
            values[name] = v.contiguous()
        for name in spec.scalars:
            values[name] = getattr(payload, name)
        try:
            return spec.cls(**values)
        except TypeError as e:
            raise PayloadError("bad-fields", str(e)) from None

    def aggregate(self, rnd, replies):
        if self.summed:  # the method's own mean, finished from the sum
            return self.inner.aggregate(rnd, replies)
        if self.broadcast is not None:
            self.broadcast.accepted(replies)
        rebuilt = {c: p.rebuilt for c, p in replies.items()}
        if self.vote and rebuilt:
            rebuilt = self._majority_vote(rebuilt)
        return self.inner.aggregate(rnd, rebuilt)

    def _majority_vote(self, rebuilt: dict[int, Payload]) -> dict[int, Payload]:
        """signSGD with majority vote (Bernstein et al. 2019, Alg. 2): each entry moves by the sign
        most clients sent, one vote a client, scaled by the clients' mean magnitude (their EF-SignSGD
        scales); every reply the method aggregates then carries that one update."""
        first = next(iter(rebuilt.values()))
        values = {}
        for name in first.tensor_fields():
            deltas = []
            for c, p in rebuilt.items():
                ref = _reference(self.sent.get(c), name, getattr(p, name))
                deltas.append(getattr(p, name) - ref if ref is not None else getattr(p, name))
            stack = torch.stack(deltas)
            update = torch.sign(torch.sign(stack).sum(0)) * stack.abs().mean(0)
            values[name] = update
        out = {}
        for c, p in rebuilt.items():
            changed = {}
            for name, update in values.items():
                ref = _reference(self.sent.get(c), name, update)
                changed[name] = update + ref if ref is not None else update.clone()
            out[c] = dataclasses.replace(p, **changed)
        return out

    def state_dict(self) -> dict:
        out = self.inner.state_dict()
        return {**out, "compress_downlink": self.broadcast.state_dict()} if self.broadcast is not None else out

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)
        if self.broadcast is not None and "compress_downlink" in state:
            self.broadcast.load_state_dict(state["compress_downlink"])

    def summary_extra(self) -> dict:
        s = self.settings
        detail = {"topk": f"ratio={s.ratio:g}", "randk": f"ratio={s.ratio:g}", "qsgd": f"bits={s.bits}", "sign": "", "powersgd": f"rank={s.rank}"}[s.method]
        return {**self.inner.summary_extra(), "compress": f"{s.method}({detail}{', ' if detail else ''}ef={'on' if s.error_feedback else 'off'})"}
