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
   noise and trains a conditional GAN (``featherfl.models.cgan``).
   ``GeneratorDown`` down (category ``generator``, once per device) -> ``AugmentDone``
   up (control): each device generates samples of its target labels until its label
   counts are close to uniform, keeps them (uint8) in its own state and reports the
   paper's privacy-leakage measures (Sec. 3, "privacy leakage"):
   device-server PL = |L_t| / (|L_t| + |L_r|) and inter-device
   PL = |L_t^(i)| / |U_j (L_t^(j) u L_r^(j))|.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from featherfl.algorithms.base import Algorithm, ClientData, ClientWrapper, Wrapper
from featherfl.seeding import derive_seed, generator
from featherfl.config import ConfigError, Field
from featherfl.models import flat_state, load_flat_state
from featherfl.models.cgan import Discriminator, Generator
from featherfl.wire import Payload, ScalarSpec, Spec, TensorSpec

FAUG_CONFIG: dict[str, Field] = {
    "faug.enabled": Field("bool", False, "Run federated augmentation as a one-time first phase around the configured method (image data)."),
    "faug.threshold": Field("float", 0.5, "A label is a target label when the device holds fewer than threshold x (its samples / labels) of it.", min=0.0, max=1.0, min_exclusive=True),
    "faug.seeds_per_label": Field("int", 5, "Seed samples uploaded per target or redundant label.", min=1, max=10_000),
    "faug.redundant_labels": Field("int", 2, "Non-target labels each device also uploads seeds of, hiding which labels are targets.", min=0),
    "faug.gan_steps": Field("int", 10000, "Most server-side conditional GAN training steps (training stops earlier once stop_recognition is reached).", min=1),
    "faug.check_every": Field("int", 500, "Check the generator's samples every this many GAN steps (0 = never: train all gan_steps).", min=0),
    "faug.stop_recognition": Field("float", 0.9, "Stop GAN training once a classifier trained on the augmented seeds labels at least this share of generated samples as their label (0 = off).", min=0.0, max=1.0),
    "faug.patience": Field("int", 0, "Also stop GAN training after this many checks in a row without a higher recognition than the best so far, and keep the best generator (0 = off: run on to gan_steps and keep the last). On digits with the default seed, where recognition stalls near 85 %, 4 cut an FD+FAug run from 339 s to 144 s (docs/methods/fd.md).", min=0),
    "faug.gan_batch": Field("int", 64, "GAN mini-batch (drawn with replacement from the augmented seeds).", min=2),
    "faug.gan_lr": Field("float", 2e-4, "Adam learning rate of the generator and the discriminator.", min=0.0, min_exclusive=True),
    "faug.noise_dim": Field("int", 100, "Generator noise dimension.", min=1),
    "faug.gen_hidden": Field("list[int]", [256, 512, 1024], "Generator hidden layer widths."),
    "faug.disc_hidden": Field("list[int]", [512, 512, 512], "Discriminator hidden layer widths."),
    "faug.aug_rotate": Field("float", 10.0, "Seed oversampling: max random rotation (degrees).", min=0.0, max=180.0),
    "faug.aug_shift": Field("float", 0.1, "Seed oversampling: max random shift (fraction of the image side).", min=0.0, max=0.5),
    "faug.aug_noise": Field("float", 0.05, "Seed oversampling: std of added pixel noise (pixels in [0, 1]).", min=0.0),
    "faug.grid_per_label": Field("int", 8, "Generated samples per label in the run folder's faug_samples.png.", min=1, max=64),
}

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


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8, 8 bits per pixel on the wire."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def from_pixels(p: torch.Tensor) -> torch.Tensor:
    return p.float() / 255.0


def augment(x: torch.Tensor, gen: torch.Generator, rotate_deg: float, shift: float, noise: float) -> torch.Tensor:
    """Oversampling transform of the seeds: random rotation and shift (affine grid), plus pixel noise."""
    n = x.shape[0]
    a = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rotate_deg)
    t = (torch.rand(n, 2, generator=gen) * 2 - 1) * 2 * shift
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    theta[:, :, 2] = t
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    if noise > 0:
        out = out + noise * torch.randn(out.shape, generator=gen)
    return out.clamp(0, 1)


def build_generator(ctx, opts: dict) -> Generator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(ctx.seed, "faug-generator-init"))
        return Generator(opts["noise_dim"], ctx.num_classes, ctx.input_shape, list(opts["gen_hidden"]))


def train_judge(x: torch.Tensor, y: torch.Tensor, ctx, opts: dict, steps: int = 300) -> torch.nn.Module:
    """A small classifier trained on the augmented seeds: the stopping rule's judge of whether
    generated samples look like their label (it sees only what the server has: the seeds)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(ctx.seed, "faug-judge-init"))
        judge = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(ctx.input_shape), 256), torch.nn.ReLU(), torch.nn.Linear(256, ctx.num_classes))
    opt = torch.optim.Adam(judge.parameters(), lr=1e-3)
    gen = generator(ctx.seed, "faug-judge")
    for _ in range(steps):
        idx = torch.randint(len(y), (64,), generator=gen)
        real = augment(x[idx], gen, opts["aug_rotate"], opts["aug_shift"], opts["aug_noise"])
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(judge(real), y[idx]).backward()
        opt.step()
    return judge.eval()


@torch.no_grad()
def recognition(g: Generator, judge: torch.nn.Module, labels: list[int], gen: torch.Generator, per_label: int = 32) -> float:
    """Share of generated samples (``per_label`` of each label) the judge labels as their label."""
    x, y = sample_generator(g, {c: per_label for c in labels}, gen)
    g.train()
    return float((judge(from_pixels(x)).argmax(1) == y).float().mean())


#: Generators already trained in this process, by a digest of everything that determines them
#: (seeds, labels, [faug] keys, run seed, shapes): runs that upload the same seeds (e.g. FD+FAug
#: and FedAvg+FAug on one partition) train the GAN once. Training is deterministic, so this
#: changes no result.
_TRAINED: dict[str, tuple[dict, dict]] = {}


def _digest(x: torch.Tensor, y: torch.Tensor, ctx, opts: dict) -> str:
    h = hashlib.sha256()
    h.update(x.contiguous().numpy().tobytes())
    h.update(y.contiguous().numpy().tobytes())
    h.update(repr((sorted((k, v) for k, v in opts.items() if k != "grid_per_label"), ctx.seed, tuple(ctx.input_shape), ctx.num_classes)).encode())
    return h.hexdigest()


def train_cgan(x: torch.Tensor, y: torch.Tensor, ctx, opts: dict, stats: dict | None = None) -> Generator:
    """Train the conditional GAN on oversampled, augmented seeds (pixels in [0, 1]).

    Every ``check_every`` steps the generator's samples are shown to a judge trained on the
    augmented seeds; training stops once it recognises ``stop_recognition`` of them as their
    label, after ``patience`` checks in a row that do not beat the best recognition so far (the
    best generator is kept: GAN training does not improve monotonically), or after ``gan_steps``.
    ``stats`` receives the steps run, the returned generator's recognition and, when the best
    generator is an earlier one, the step it comes from.
    """
    key = _digest(x, y, ctx, opts)
    if key in _TRAINED:
        weights, done = _TRAINED[key]
        g = build_generator(ctx, opts)
        g.load_state_dict(weights)
        g.eval()
        if stats is not None:
            stats.update(done)
        return g
    g = build_generator(ctx, opts)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(ctx.seed, "faug-discriminator-init"))
        d = Discriminator(ctx.num_classes, ctx.input_shape, list(opts["disc_hidden"]))
    opt_g = torch.optim.Adam(g.parameters(), lr=opts["gan_lr"], betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=opts["gan_lr"], betas=(0.5, 0.999))
    gen = generator(ctx.seed, "faug-gan")
    check = opts.get("check_every", 0)
    target = opts.get("stop_recognition", 0.0)
    judge = train_judge(x, y, ctx, opts) if check and target > 0 else None
    labels = sorted(set(y.tolist()))
    bs = opts["gan_batch"]
    ones, zeros = torch.ones(bs), torch.zeros(bs)
    g.train()
    d.train()
    done: dict = {"gan_steps": 0, "recognition": None}
    patience = opts.get("patience", 0) if judge is not None else 0
    best: tuple[float, int, dict] | None = None  # (recognition, step, generator weights)
    stale = 0
    for step in range(1, opts["gan_steps"] + 1):
        idx = torch.randint(len(y), (bs,), generator=gen)
        real = augment(x[idx], gen, opts["aug_rotate"], opts["aug_shift"], opts["aug_noise"]) * 2 - 1
        lab = y[idx]
        fake = g(torch.randn(bs, opts["noise_dim"], generator=gen), lab)
        opt_d.zero_grad(set_to_none=True)
        loss_d = F.binary_cross_entropy_with_logits(d(real, lab), ones) + F.binary_cross_entropy_with_logits(d(fake.detach(), lab), zeros)
        loss_d.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(d(fake, lab), ones).backward()
        opt_g.step()
        done["gan_steps"] = step
        if judge is not None and step % check == 0:
            done["recognition"] = recognition(g, judge, labels, generator(ctx.seed, "faug-check", step))
            if done["recognition"] >= target:
                break
            if patience:
                if best is None or done["recognition"] > best[0]:
                    best, stale = (done["recognition"], step, {k: v.clone() for k, v in g.state_dict().items()}), 0
                else:
                    stale += 1
                if stale >= patience:
                    break
    if best is not None and done["recognition"] is not None and done["recognition"] < target and best[0] > done["recognition"]:
        g.load_state_dict(best[2])  # the last check was not the best: hand out the best generator
        done["recognition"], done["best_step"] = best[0], best[1]
    g.eval()
    _TRAINED.clear()  # one entry is enough for the reuse above; keep memory flat
    _TRAINED[key] = ({k: v.clone() for k, v in g.state_dict().items()}, dict(done))
    if stats is not None:
        stats.update(done)
    return g


@torch.no_grad()
def sample_generator(g: Generator, plan: dict[int, int], gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate ``plan[label]`` samples per label; returns (uint8 pixels, labels)."""
    g.eval()
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in sorted(plan.items())]) if plan else torch.zeros(0, dtype=torch.int64)
    if len(labels) == 0:
        return torch.zeros(0, *g.out_shape, dtype=torch.uint8), labels
    z = torch.randn(len(labels), g.noise_dim, generator=gen)
    return to_pixels((g(z, labels) + 1) / 2), labels


# --- the wrapper: FAug(inner) around any method ------------------------------------------------


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
        return counts, find_target_labels(counts, self.opts["threshold"])

    def _seeds(self, data: ClientData, state: dict) -> SeedsUp:
        counts, targets = self._targets(data)
        gen = generator(self.ctx.seed, "faug-seeds", data.cid)
        redundant = choose_redundant(counts, targets, self.opts["redundant_labels"], gen)
        k = self.opts["seeds_per_label"]
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
            most = L * self.opts["seeds_per_label"]
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
        k = self.opts["seeds_per_label"]
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
        g = build_generator(self.ctx, self.opts)
        load_flat_state(g, self.weights)
        write_sample_grid(g, self.labels, self.ctx.num_classes, self.opts["grid_per_label"], Path(run_dir) / "faug_samples.png", self.ctx.seed)


def write_sample_grid(g: Generator, labels: list[int], num_classes: int, per_label: int, path: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, h, w = g.out_shape
    grid = torch.zeros(num_classes * (h + 1), per_label * (w + 1), c)
    x, y = sample_generator(g, {lab: per_label for lab in labels}, generator(seed, "faug-grid"))
    for i, (img, lab) in enumerate(zip(from_pixels(x), y.tolist())):
        col = i % per_label
        grid[lab * (h + 1) : lab * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = img.permute(1, 2, 0)
    scale = max(1, 256 // max(grid.shape[0], grid.shape[1]))
    arr = grid.repeat_interleave(scale, 0).repeat_interleave(scale, 1).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    if c == 1:
        plt.imsave(path, arr[:, :, 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        plt.imsave(path, arr)
