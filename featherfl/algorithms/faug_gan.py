"""FAug's server-side GAN (Jeong et al. 2018, Sec. 3): oversample the pooled seed samples with
small random affine transforms and noise, train a conditional GAN on them, and sample it.

Training stops early once a judge (a small classifier trained on the augmented seeds, all the
server has) recognises enough generated samples as their label. Pixels travel as uint8.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F

from featherfl.models.cgan import Discriminator, Generator
from featherfl.seeding import derive_seed, generator


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
