"""FAug: federated augmentation (Jeong et al. 2018, "Communication-Efficient On-Device
Machine Learning: Federated Distillation and Augmentation under Non-IID Private Data", Sec. 3).

A one-time phase before training around any method (``faug.enabled = true``: the
``FAug(inner)`` wrapper at the end of this file). It runs as the engine's setup
exchange (``Algorithm.setup_configure``), in two steps, all bytes counted:

1. ``SeedRequest`` down (control) -> ``SeedsUp`` up (category ``samples``): each
   device finds its *target labels* L_t (fewer samples than ``faug.threshold`` x its
   uniform share) and uploads ``faug.seeds_per_label`` seed samples of each, plus
   seeds of ``faug.redundant_labels`` random non-target labels L_r so the server
   cannot tell which labels are targets. Pixels travel as uint8 (8 bits each).
2. The server oversamples the pooled seeds with small random affine transforms and
   noise and trains a conditional GAN (``featherfl.models.cgan``; the training in
   ``faug_gan.py``).
   ``GeneratorDown`` down (category ``generator``, once per device) -> ``AugmentDone``
   up (control): each device generates samples of its target labels until its label
   counts are close to uniform, keeps them (uint8) in its own state and reports the
   paper's privacy-leakage measures (Sec. 3, "privacy leakage"):
   device-server PL = |L_t| / (|L_t| + |L_r|) and inter-device
   PL = |L_t^(i)| / |U_j (L_t^(j) u L_r^(j))|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from featherfl.algorithms.base import Algorithm, ClientData, ClientWrapper, Wrapper
from featherfl.seeding import generator
from featherfl.config import ConfigError
from featherfl.models import flat_state, load_flat_state
from featherfl.algorithms.faug_gan import augment, build_generator, from_pixels, sample_generator, to_pixels, train_cgan, train_judge  # noqa: F401  (train_judge, augment: the GAN's parts, read by tests)
from featherfl.wire import Payload, ScalarSpec, Spec, TensorSpec


MAX_GENERATED = 10**9


@dataclass(frozen=True)
class SeedRequest(Payload):
    KIND = "faug.request"
    CATEGORY = "control"


@dataclass(frozen=True)
class SeedsUp(Payload):
    KIND = "faug.seeds"
    CATEGORY = "samples"
    pixels: torch.Tensor  # uint8 (n, C, H, W)
    labels: list


@dataclass(frozen=True)
class GeneratorDown(Payload):
    KIND = "faug.generator"
    CATEGORY = "generator"
    weights: torch.Tensor  # the generator's flat state, float32
    labels: list  # labels the generator was trained on (it can only produce these)
    uploaded_labels: int  # |U_j (L_t^(j) u L_r^(j))|, for the inter-device PL


@dataclass(frozen=True)
class AugmentDone(Payload):
    KIND = "faug.done"
    CATEGORY = "control"
    generated: int
    pl_device_server: float
    pl_inter_device: float


# --- what the paper computes, as small pure functions --------------------------------------


def label_counts(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(y, minlength=num_classes)


def find_target_labels(counts: torch.Tensor, threshold: float) -> list[int]:
    """Labels the device lacks: fewer than ``threshold`` x its uniform share (total / labels)."""
    share = float(counts.sum()) / len(counts)
    return [int(c) for c in range(len(counts)) if float(counts[c]) < threshold * share]


def choose_redundant(counts: torch.Tensor, targets: list[int], k: int, gen: torch.Generator) -> list[int]:
    """``k`` random labels the device does have (non-targets with samples), uploaded as cover."""
    pool = [c for c in range(len(counts)) if c not in targets and int(counts[c]) > 0]
    order = torch.randperm(len(pool), generator=gen).tolist()
    return sorted(pool[i] for i in order[:k])


def pl_device_server(n_target: int, n_redundant: int) -> float:
    """|L_t| / (|L_t| + |L_r|): the chance the server guesses a given uploaded label is a target."""
    total = n_target + n_redundant
    return n_target / total if total else 0.0


def pl_inter_device(n_target: int, union_size: int) -> float:
    """|L_t^(i)| / |U_j (L_t^(j) u L_r^(j))|: what another device can infer from the generator's labels."""
    return n_target / union_size if union_size else 0.0


def generation_plan(counts: torch.Tensor, targets: list[int], available: list[int]) -> dict[int, int]:
    """How many samples to generate per target label so the device's label counts become
    close to uniform: each target label is topped up to the mean count of its non-target labels."""
    others = [int(counts[c]) for c in range(len(counts)) if c not in targets and int(counts[c]) > 0]
    quota = round(sum(others) / len(others)) if others else int(counts.max())
    return {t: quota - int(counts[t]) for t in targets if t in available and quota > int(counts[t])}


def augmented(data: ClientData, state: dict) -> ClientData:
    """The device's own samples plus the ones it generated with the FAug generator (if any)."""
    if "faug_y" not in state or len(state["faug_y"]) == 0:
        return data
    x = torch.cat([data.x, from_pixels(state["faug_x"]).to(data.x.dtype)])
    return ClientData(data.cid, x, torch.cat([data.y, state["faug_y"]]), data.num_classes)


def check_input(input_shape: tuple[int, ...]) -> None:
    """FAug's GAN makes images: the data must be (channels, height, width) pixels in [0, 1]."""
    if len(input_shape) != 3:
        raise ConfigError(f"config key 'faug.enabled': FAug generates images (channels x height x width), but this dataset's samples have shape {tuple(input_shape)}")


class FAugClient(ClientWrapper):
    """Device side of FAug around any method's client half: it answers the two setup payloads
    itself and then runs the inner client on ``ClientData`` that includes the generated samples."""

    def __init__(self, inner):
        super().__init__(inner)
        self.opts = self.ctx.cfg.section("faug")
        self.generator = build_generator(self.ctx, self.opts)
        self.n = flat_state(self.generator).numel()

    def downlink_specs(self, rnd: int) -> dict[str, Spec]:
        L = self.ctx.num_classes
        return {
            **self.inner.downlink_specs(rnd),
            SeedRequest.KIND: Spec(SeedRequest, {}),
            GeneratorDown.KIND: Spec(
                GeneratorDown,
                {"weights": TensorSpec("float32", (self.n,), max_abs=1e6)},
                {"labels": ScalarSpec("list[int]", 0, L - 1, max_len=L), "uploaded_labels": ScalarSpec("int", 0, L)},
            ),
        }

    def update(self, rnd: int, down: Payload, data: ClientData, state: dict) -> Payload:
        if isinstance(down, SeedRequest):
            return self._seeds(data, state)
        if isinstance(down, GeneratorDown):
            return self._generate(down, data, state)
        return self.inner.update(rnd, down, augmented(data, state), state)

    def update_many(self, rnd: int, downs: dict, data: dict, states: dict) -> dict:
        if any(isinstance(d, (SeedRequest, GeneratorDown)) for d in downs.values()):
            return {cid: self.update(rnd, d, data[cid], states[cid]) for cid, d in downs.items()}
        return self.inner.update_many(rnd, downs, {cid: augmented(data[cid], states[cid]) for cid in downs}, states)

    def _targets(self, data: ClientData) -> tuple[torch.Tensor, list[int]]:
        counts = label_counts(data.y, data.num_classes)
        return counts, find_target_labels(counts, self.opts.threshold)

    def _seeds(self, data: ClientData, state: dict) -> SeedsUp:
        counts, targets = self._targets(data)
        gen = generator(self.ctx.seed, "faug-seeds", data.cid)
        redundant = choose_redundant(counts, targets, self.opts.redundant_labels, gen)
        k = self.opts.seeds_per_label
        picks, labels = [], []
        for c in sorted(targets + redundant):
            idx = torch.nonzero(data.y == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)[:k]]
            picks.append(idx)
            labels += [c] * len(idx)
        idx = torch.cat(picks) if picks else torch.zeros(0, dtype=torch.int64)
        state["faug_targets"] = [c for c in targets if int(counts[c]) > 0]
        state["faug_redundant"] = redundant
        return SeedsUp(to_pixels(data.x[idx]), labels)

    def _generate(self, down: GeneratorDown, data: ClientData, state: dict) -> AugmentDone:
        load_flat_state(self.generator, down.weights)
        counts, targets = self._targets(data)
        plan = generation_plan(counts, targets, list(down.labels))
        x, y = sample_generator(self.generator, plan, generator(self.ctx.seed, "faug-sample", data.cid))
        state["faug_x"], state["faug_y"] = x, y
        n_t = len(state.get("faug_targets", []))
        n_r = len(state.get("faug_redundant", []))
        return AugmentDone(len(y), pl_device_server(n_t, n_r), pl_inter_device(n_t, down.uploaded_labels))


class FAug(Wrapper):
    """``FAug(inner)``: federated augmentation as a one-time first phase around any method.

    The server runs FAug's two setup exchanges (seeds up, generator down), then hands every
    call to ``inner`` unchanged; the inner method's clients train on their own samples plus
    the generated ones (``FAugClient``). ``faug.enabled = true`` installs it
    (``featherfl.assembly``); the inner method carries no FAug code.
    """

    def __init__(self, inner: Algorithm):
        super().__init__(inner)
        self.opts = self.cfg.section("faug")
        self.phase = "seeds"
        self.labels: list[int] = []
        self.union = 0
        self.weights: torch.Tensor | None = None
        self.pl: dict[int, list[float]] = {}
        self.generated: dict[int, int] = {}

    @classmethod
    def wrap_client(cls, client, method):
        return FAugClient(client)

    # --- FAug's setup phase, then the inner method's own setup (if any) ---
    def setup_configure(self, rnd, client_ids):
        if self.phase == "seeds":
            return {cid: SeedRequest() for cid in client_ids}
        if self.phase == "generator":
            return {cid: GeneratorDown(self.weights, self.labels, self.union) for cid in client_ids}
        return self.inner.setup_configure(rnd, client_ids)

    def setup_uplink_specs(self, rnd, cid):
        L = self.ctx.num_classes
        if self.phase == "seeds":
            most = L * self.opts.seeds_per_label
            return {
                SeedsUp.KIND: Spec(
                    SeedsUp,
                    {"pixels": TensorSpec("uint8", (None, *self.ctx.input_shape), max_elems=most * math.prod(self.ctx.input_shape))},
                    {"labels": ScalarSpec("list[int]", 0, L - 1, max_len=most)},
                )
            }
        if self.phase == "generator":
            return {
                AugmentDone.KIND: Spec(
                    AugmentDone,
                    {},
                    {"generated": ScalarSpec("int", 0, MAX_GENERATED), "pl_device_server": ScalarSpec("float", 0, 1), "pl_inter_device": ScalarSpec("float", 0, 1)},
                )
            }
        return self.inner.setup_uplink_specs(rnd, cid)

    def setup_aggregate(self, rnd, replies):
        if self.phase == "seeds":
            return self._train(replies)
        if self.phase == "generator":
            for cid, r in replies.items():
                self.pl[cid] = [r.pl_device_server, r.pl_inter_device]
                self.generated[cid] = r.generated
            self.phase = "done"
            return self.metrics()
        return self.inner.setup_aggregate(rnd, replies)

    def _train(self, replies: dict) -> dict:
        """Pool the seeds (dropping replies whose labels do not match their pixels or exceed the
        per-label cap), train the cGAN, and move on to the generator download."""
        xs, ys, bad = [], [], 0
        k = self.opts.seeds_per_label
        for cid in sorted(replies):
            r = replies[cid]
            y = torch.tensor(r.labels, dtype=torch.int64)
            if len(y) != r.pixels.shape[0] or (len(y) and int(torch.bincount(y).max()) > k):
                bad += 1
                continue
            xs.append(from_pixels(r.pixels))
            ys.append(y)
        y = torch.cat(ys) if ys else torch.zeros(0, dtype=torch.int64)
        self.labels = sorted(set(y.tolist()))
        self.union = len(self.labels)
        out = {"faug_seed_samples": len(y), "faug_seed_labels": self.union, "faug_seeds_rejected": bad}
        if len(y):
            stats: dict = {}
            self.weights = flat_state(train_cgan(torch.cat(xs), y, self.ctx, self.opts, stats))
            self.phase = "generator"
            out["faug_gan_steps"] = stats["gan_steps"]
            if stats["recognition"] is not None:
                out["faug_recognition"] = stats["recognition"]
            if "best_step" in stats:
                out["faug_gan_best_step"] = stats["best_step"]
        else:
            self.phase = "done"
        return out

    def metrics(self) -> dict:
        if not self.pl:
            return {}
        ds = [v[0] for v in self.pl.values()]
        inter = [v[1] for v in self.pl.values()]
        return {
            "faug_generated": sum(self.generated.values()),
            "faug_pl_device_server_mean": sum(ds) / len(ds),
            "faug_pl_inter_device_mean": sum(inter) / len(inter),
        }

    def state_dict(self) -> dict:
        faug = {
            "phase": self.phase,
            "labels": list(self.labels),
            "union": self.union,
            "weights": self.weights,
            "pl": {int(c): list(v) for c, v in self.pl.items()},
            "generated": {int(c): int(v) for c, v in self.generated.items()},
        }
        return {**self.inner.state_dict(), "faug": faug}

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)
        if "faug" not in state:
            return
        s = state["faug"]
        self.phase = s["phase"]
        self.labels = list(s["labels"])
        self.union = int(s["union"])
        self.weights = s["weights"]
        self.pl = {int(c): list(v) for c, v in s["pl"].items()}
        self.generated = {int(c): int(v) for c, v in s["generated"].items()}

    def summary_extra(self) -> dict:
        out = {**self.inner.summary_extra(), "faug_labels": self.labels, **self.metrics()}
        out["faug_pl_per_client"] = {str(c): {"device_server": v[0], "inter_device": v[1]} for c, v in sorted(self.pl.items())}
        return out

    def artifacts(self, run_dir) -> None:
        """The inner method's files, and ``faug_samples.png``: one row per label, ``faug.grid_per_label`` generated samples each."""
        self.inner.artifacts(run_dir)
        if self.weights is None:
            return
        from featherfl.report import write_sample_grid

        g = build_generator(self.ctx, self.opts)
        load_flat_state(g, self.weights)
        per_label = self.opts.grid_per_label
        x, y = sample_generator(g, {lab: per_label for lab in self.labels}, generator(self.ctx.seed, "faug-grid"))
        write_sample_grid(from_pixels(x), y, self.ctx.num_classes, per_label, Path(run_dir) / "faug_samples.png")
