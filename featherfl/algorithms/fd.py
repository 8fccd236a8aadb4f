"""FD: federated distillation (Jeong et al. 2018, "Communication-Efficient On-Device Machine
Learning: Federated Distillation and Augmentation under Non-IID Private Data", Sec. 2, Alg. 1).

Weights never leave a device and there is no global model. In global iteration k,
device i runs ``fd.local_steps`` steps on its own model and, for every training
sample, adds its model's softmax output to a per-label running sum and count.
It uploads the per-label mean output vectors (L x L float32) and the counts.
The server keeps each device's latest upload and sends device i its own
*leave-one-out* teacher: per label, the combination over the other devices
j != i that have that label (the paper's sum_{j != i} F^(j) / (M - 1)); labels no
other device has are marked absent (contributor count 0). The local loss is
cross-entropy with the true label plus ``gamma`` x cross-entropy between the
model's output and the teacher vector of the sample's label; until a teacher
arrives, or for labels without one, only cross-entropy is used.

Wire per device per iteration, both ways: 4 L^2 bytes of vectors + 4 L bytes of
counts (int32) + the codec header. Devices may run different architectures
(``fd.models``, assigned round-robin): only the output dimension L must match.

``fd.logit_noise`` adds Gaussian noise to the uploaded vectors (Gaussian mechanism;
the paper lists this as future work): each row is clipped to L2 norm C, so two
uploads differ by at most 2 C sqrt(L) in L2 whatever the device's data, and
noise of std ``logit_noise`` x 2 C sqrt(L) makes each upload device-level
(epsilon, delta)-DP, composed over rounds with the RDP accountant. The counts
are sent in the clear and are not covered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from featherfl.algorithms import sections
from featherfl.algorithms.aggregate import Aggregator, combine
from featherfl.algorithms import vectorized
from featherfl.algorithms.base import Algorithm, ClientData, ClientHalf, Context
from featherfl.algorithms.summation import UPDATE_STEP, Range, Summation, SumStateError
from featherfl.seeding import derive_seed, generator
from featherfl.algorithms.training import batches, evaluate_model, make_optimizer
from featherfl.config import ConfigError
from featherfl.devices import model_device
from featherfl.privacy.client_level import clip_rows
from featherfl.models import count_parameters, model_names
from featherfl.wire import Payload, ScalarSpec, Spec, TensorSpec

MAX_COUNT = 2**31 - 1
NOISY_MAX_ABS = 1e6


@dataclass(frozen=True)
class TeacherDown(Payload):
    KIND = "fd.teacher"
    CATEGORY = "logits"
    teacher: torch.Tensor  # (L, L) float32: row l = the other devices' mean output for label l
    contributors: torch.Tensor  # (L,) int32: how many other devices gave label l (0 = absent)


@dataclass(frozen=True)
class LogitsUp(Payload):
    KIND = "fd.logits"
    CATEGORY = "logits"
    logits: torch.Tensor  # (L, L) float32: row l = this device's mean output on label-l samples
    counts: torch.Tensor  # (L,) int32: outputs summed into each row


# --- Alg. 1, as small pure functions ----------------------------------------------------------


def accumulate(sums: torch.Tensor, counts: torch.Tensor, probs: torch.Tensor, y: torch.Tensor) -> None:
    """Add each sample's output vector to its label's running sum (Alg. 1, local logit update)."""
    sums.index_add_(0, y, probs)
    counts += torch.bincount(y, minlength=len(counts))


def label_means(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Per-label mean output vectors; rows of labels never seen stay zero."""
    return sums / counts.clamp_min(1).to(sums.dtype).unsqueeze(1)


def leave_one_out(
    vectors: torch.Tensor, present: torch.Tensor, rule: str = "mean", beta: float = 0.1, clip: float = 10.0, ids=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher of device i: per label l, ``rule`` over devices j != i holding l.

    ``vectors`` (M, L, L), ``present`` (M, L) bool. Returns teachers and contributor counts for
    the devices ``ids`` (default: all M), in that order: (len(ids), L, L) and (len(ids), L). With
    ``mean`` this is the paper's sum_{j != i} F^(j) / (M - 1) when every device holds every label,
    computed as the population's total minus device i's own vectors, the total summed once in
    float64: O(M L^2 + len(ids) L^2), so a round at 10^5 devices costs what one sum over them
    costs (a device's own vectors leave the total exactly up to float64 rounding, far below the
    float32 the teacher is sent in). ``norm-clip`` clips around the others' median.
    """
    m, n_labels, _ = vectors.shape
    ids = list(range(m)) if ids is None else [int(i) for i in ids]
    teachers = torch.zeros(len(ids), n_labels, n_labels, dtype=vectors.dtype)
    contributors = torch.zeros(len(ids), n_labels, dtype=torch.int32)
    if rule == "mean":  # the common case, vectorised
        w = present.to(torch.float64)
        total = (vectors.to(torch.float64) * w.unsqueeze(2)).sum(0)
        holders = present.sum(0).to(torch.int64)
        own_w = w[ids]
        n = holders.unsqueeze(0) - present[ids].to(torch.int64)
        others = total.unsqueeze(0) - vectors[ids].to(torch.float64) * own_w.unsqueeze(2)
        teachers = (others / n.clamp_min(1).unsqueeze(2).to(torch.float64)).to(vectors.dtype)
        teachers[n == 0] = 0  # a label nobody else holds: no teacher (not rounding left-overs)
        return teachers, n.to(torch.int32)
    for lab in range(n_labels):
        holders = torch.nonzero(present[:, lab]).flatten().tolist()
        for k, i in enumerate(ids):
            others = [j for j in holders if j != i]
            if not others:
                continue
            stack = vectors[others, lab]
            ref = stack.median(0).values if rule == "norm-clip" else None
            teachers[k, lab] = combine(stack, torch.ones(len(others)), rule, beta, clip, reference=ref)
            contributors[k, lab] = len(others)
    return teachers, contributors


def distillation_loss(logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor, has_teacher: torch.Tensor, gamma: float, temperature: float) -> torch.Tensor:
    """CE(true label) + gamma * CE(teacher[y], softmax(logits / T)), the regulariser only for
    samples whose label has a teacher (averaged over the whole batch)."""
    loss = F.cross_entropy(logits, y)
    mask = has_teacher[y]
    if gamma == 0 or not bool(mask.any()):
        return loss
    logp = F.log_softmax(logits[mask] / temperature, 1)
    return loss + gamma * (-(teacher[y[mask]] * logp).sum(1)).sum() / len(y)


def noise_std(multiplier: float, clip: float, num_labels: int) -> float:
    """Gaussian-mechanism std: multiplier x L2 sensitivity 2 C sqrt(L) of a row-clipped upload."""
    return multiplier * 2 * clip * math.sqrt(num_labels)


def dp_epsilon(multiplier: float, releases: int, delta: float) -> float:
    """epsilon after ``releases`` Gaussian-mechanism uploads (the RDP accountant, sampling rate 1)."""
    from featherfl.privacy.accountant import epsilon

    return epsilon([(multiplier, 1.0, releases)], delta)


def model_for(cfg, cid: int) -> str:
    """Round-robin assignment of ``fd.models`` (default: ``model.name`` for everyone)."""
    names = cfg["fd.models"] or [cfg["model.name"]]
    return names[cid % len(names)]


def step_batches(n: int, batch_size: int, gen: torch.Generator):
    while True:
        yield from batches(n, batch_size, gen)


# --- the two halves ----------------------------------------------------------------------------


class FDClient(ClientHalf):
    """Device side: own model (kept in the device's state), local steps with the distillation
    regulariser, upload of per-label mean outputs."""

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.opts = ctx.cfg.section("fd")
        self.models: dict[str, torch.nn.Module] = {}
        self.inits: dict[str, dict] = {}

    def _model(self, state: dict, cid: int) -> torch.nn.Module:
        name = state.get("model_name") or model_for(self.ctx.cfg, cid)
        if name not in self.models:
            self.models[name] = self.ctx.build_model(name)
            self.inits[name] = {k: v.clone() for k, v in self.models[name].state_dict().items()}
        m = self.models[name]
        m.load_state_dict(state["model"] if "model" in state else self.inits[name])
        state["model_name"] = name
        return m

    def downlink_specs(self, rnd):
        L = self.ctx.num_classes
        return {TeacherDown.KIND: Spec(TeacherDown, {"teacher": TensorSpec("float32", (L, L), max_abs=NOISY_MAX_ABS), "contributors": TensorSpec("int32", (L,), min_value=0, max_value=MAX_COUNT)})}

    def _teacher(self, down: Payload, dev) -> tuple[torch.Tensor, torch.Tensor]:
        """The received teacher rows normalised to distributions, and which labels have one."""
        teacher = down.teacher.clamp_min(0)
        mass = teacher.sum(1)
        has_teacher = ((down.contributors > 0) & (mass > 0)).to(dev)
        return (teacher / mass.clamp_min(1e-12).unsqueeze(1)).to(dev), has_teacher

    def update(self, rnd: int, down: Payload, data: ClientData, state: dict) -> Payload:
        o = self.opts
        L = self.ctx.num_classes
        model = self._model(state, data.cid)
        dev = model_device(model)
        x, y = data.x.to(dev), data.y.to(dev)
        teacher, has_teacher = self._teacher(down, dev)
        opt = make_optimizer(model.parameters(), o)
        gen = generator(self.ctx.seed, "fd-client", rnd, data.cid)
        sums, counts = torch.zeros(L, L, device=dev), torch.zeros(L, dtype=torch.int64, device=dev)
        model.train()
        for _, idx in zip(range(o.local_steps), step_batches(len(y), o.batch_size, gen)):
            opt.zero_grad(set_to_none=True)
            logits = model(x[idx])
            distillation_loss(logits, y[idx], teacher, has_teacher, o.gamma, o.temperature).backward()
            opt.step()
            accumulate(sums, counts, F.softmax(logits.detach() / o.temperature, 1), y[idx])
        state["model"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return self._upload(rnd, data.cid, sums.cpu(), counts.cpu())

    def _upload(self, rnd: int, cid: int, sums: torch.Tensor, counts: torch.Tensor) -> LogitsUp:
        o = self.opts
        means = label_means(sums, counts)
        if o.logit_noise > 0:
            noise = torch.randn(means.shape, generator=generator(self.ctx.seed, "fd-noise", rnd, cid))
            means = clip_rows(means, o.noise_clip)[0] + noise_std(o.logit_noise, o.noise_clip, self.ctx.num_classes) * noise
        return LogitsUp(means.float(), counts.clamp(max=MAX_COUNT).to(torch.int32))

    def can_update_many(self) -> bool:
        """Batched local training (``engine.vectorize``) when every device runs one architecture,
        on the CPU, without BatchNorm or dropout (``vectorized.supports``), and the sequential
        ``update`` is not replaced (test doubles, subclasses)."""
        names = set(self.ctx.cfg["fd.models"] or [self.ctx.cfg["model.name"]])
        if len(names) != 1 or type(self).update is not FDClient.update:
            return False
        name = names.pop()
        if name not in self.models:
            self._model({}, 0)
        return vectorized.supports(self.models[name])

    def update_many(self, rnd: int, downs: dict, data: dict[int, ClientData], states: dict[int, dict]) -> dict[int, Payload]:
        """Every device's local steps as one batched computation: each device starts from its own
        model (its state), with its own teacher, batch order (the same seeded generator as
        ``update``), optimiser state and per-label output sums; equal to ``update`` device by
        device within float rounding."""
        o = self.opts
        cids = list(downs)
        if any(len(data[c]) == 0 for c in cids):  # nothing to batch over: the plain path says what happens
            return {c: self.update(rnd, downs[c], data[c], states[c]) for c in cids}
        runs, teachers, epochs = [], [], []
        for cid in cids:
            model = self._model(states[cid], cid)
            start = {k: p.detach().clone() for k, p in model.named_parameters()}
            runs.append(vectorized.ClientRun(start, data[cid].x, data[cid].y, generator(self.ctx.seed, "fd-client", rnd, cid)))
            teachers.append(self._teacher(downs[cid], torch.device("cpu")))
            n, bs = len(data[cid]), o.batch_size
            n_batches = 1 if bs <= 0 else -(-n // bs)  # as ``batches`` splits an epoch
            epochs.append(-(-o.local_steps // n_batches))
        # several batched calls when one would need too much memory (vectorized.client_groups)
        finals: list = [None] * len(cids)
        sums: list = [None] * len(cids)
        counts: list = [None] * len(cids)
        params = sum(p.numel() for p in model.parameters())
        for group in vectorized.client_groups([len(r.y) for r in runs], params, runs[0].x.shape[1:].numel()):
            got = self._train_group(model, [runs[i] for i in group], [teachers[i] for i in group], [epochs[i] for i in group])
            for i, f, s_, c_ in zip(group, *got):
                finals[i], sums[i], counts[i] = f, s_, c_
        # every device's new state and upload first, then the states: a failure leaves them as they were
        new_states, out = {}, {}
        for i, cid in enumerate(cids):
            model = self._model(states[cid], cid)
            with torch.no_grad():
                for k, p in model.named_parameters():
                    p.copy_(finals[i][k])
            new_states[cid] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            out[cid] = self._upload(rnd, cid, sums[i], counts[i])
        for cid, st in new_states.items():
            states[cid]["model"] = st
        return out

    def _train_group(self, model, runs, teachers, epochs) -> tuple[list, list, list]:
        """One batched call over ``runs``: (final tensors, per-label output sums, counts) per device."""
        o = self.opts
        L, T = self.ctx.num_classes, o.temperature
        teacher = torch.stack([t for t, _ in teachers])  # (C, L, L)
        has = torch.stack([h for _, h in teachers]).to(teacher.dtype)  # (C, L): 1 where label l has a teacher
        gamma = float(o.gamma)
        C = len(runs)
        rows = torch.arange(C).unsqueeze(1)

        def loss_fn(logits, y):
            """distillation_loss's per-sample terms for every device at once (a device or label without
            a teacher adds exactly 0)."""
            ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
            if gamma == 0 or not bool(has.any()):
                return ce
            soft = -(teacher[rows, y] * F.log_softmax(logits / T, 2)).sum(2)
            return ce + gamma * has[rows, y] * soft

        sums = torch.zeros(C * L, L)
        counts = torch.zeros(C * L, dtype=torch.int64)

        def observe(logits, y, mask):
            """Each device's per-label sums of its outputs on the samples it trained on this step."""
            keep = mask.flatten() > 0
            slot = (y + rows * L).flatten()[keep]
            sums.index_add_(0, slot, F.softmax(logits / T, 2).flatten(0, 1)[keep])
            counts.add_(torch.bincount(slot, minlength=C * L))

        finals, _ = vectorized.train_clients(
            model, runs, o, 1, o.batch_size, o.local_steps, loss_fn=loss_fn, observe=observe, epochs_per_client=epochs
        )
        return finals, list(sums.view(C, L, L)), list(counts.view(C, L))

    def evaluate(self, state: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
        """The device's own model on the common test set; ``None`` for a device that never trained."""
        if "model" not in state:
            return {"accuracy": None, "loss": None}
        return evaluate_model(self._model(state, -1), x, y, self.ctx.cfg["eval.batch_size"])


@dataclass(frozen=True)
class TotalsDown(Payload):
    """FD under a sum (``FDSums``): the last summed round's per-label totals."""

    KIND = "fd.totals"
    CATEGORY = "logits"
    totals: torch.Tensor  # (L, L) float32: sum over devices of their mean output per label they hold
    holders: torch.Tensor  # (L,) int32: devices that held each label
    from_round: int  # the round these totals come from (0 = none yet)
    included: bool  # whether this device's upload is inside the totals


class FDSums(Summation):
    """FD under a sum: a device sends ``[F * present, present]`` (its per-label mean outputs where
    it has the label, and which labels it has). The server keeps the round's totals and sends them
    back; each device builds its own leave-one-out teacher ``(T - F_own) / (H - present_own)``,
    which is the plain FD teacher (the mean over the other devices holding the label)."""

    KEY = "secagg-fd-own"

    def __init__(self, ctx, name: str, server=None):
        super().__init__(ctx, name, server)
        self.L = ctx.num_classes
        self.totals = torch.zeros(self.L, self.L)
        self.holders = torch.zeros(self.L, dtype=torch.int32)
        self.from_round = 0
        self.included: set[int] = set()

    @classmethod
    def value_range(cls, cfg, name: str) -> Range | None:
        """Softmax outputs lie in [0, 1]; the label flags are counts of one. With
        ``fd.logit_noise`` the uploads carry Gaussian noise, which has no bound: none declared."""
        return None if cfg["fd.logit_noise"] > 0 else Range(1.0, UPDATE_STEP, 1)

    @classmethod
    def undeclared_reason(cls, cfg, name: str) -> str:
        return "fd.logit_noise > 0: Gaussian noise on every upload has no bound"

    def count_entries(self) -> int:
        return self.L

    # client side ---------------------------------------------------------------------------
    def client_down_specs(self, specs: dict[str, Spec]) -> dict[str, Spec]:
        L = self.L
        return {
            TotalsDown.KIND: Spec(
                TotalsDown,
                {"totals": TensorSpec("float32", (L, L), max_abs=1e12), "holders": TensorSpec("int32", (L,), min_value=0, max_value=2**31 - 1)},
                {"from_round": ScalarSpec("int", 0, 2**31 - 1), "included": ScalarSpec("bool")},
            )
        }

    def client_down(self, down: TotalsDown, state: dict) -> Payload:
        t, h = down.totals.to(torch.float64), down.holders.to(torch.float64)
        # uploads by round: the server's totals only move forward, so older ones are done with
        own_by_round = {r: v for r, v in state.get(self.KEY, {}).items() if r >= down.from_round}
        state[self.KEY] = own_by_round
        if down.included:
            own = own_by_round.get(down.from_round)
            if own is None:
                raise SumStateError(f"the totals include this device's round-{down.from_round} upload, which it no longer holds")
            t = t - own["vectors"].to(torch.float64)
            h = h - own["present"].to(torch.float64)
        h = h.clamp_min(0)
        teacher = t / h.clamp_min(1).unsqueeze(1)
        teacher[h == 0] = 0
        return TeacherDown(teacher.to(torch.float32), h.round().to(torch.int32))

    def summand(self, rnd: int, reply: Payload, down: Payload, state: dict) -> tuple[np.ndarray, list[float]]:
        present = (reply.counts > 0).to(torch.float32)
        vectors = reply.logits * present.unsqueeze(1)
        state.setdefault(self.KEY, {})[rnd] = {"vectors": vectors.clone(), "present": present.clone()}
        return np.concatenate([vectors.reshape(-1).to(torch.float64).numpy(), present.to(torch.float64).numpy()]), []

    # server side ---------------------------------------------------------------------------
    def configure(self, rnd: int, client_ids: list[int]) -> dict[int, Payload]:
        return {c: TotalsDown(self.totals.clone(), self.holders.clone(), self.from_round, c in self.included) for c in client_ids}

    def dim(self, rnd: int, cid: int) -> int:
        return self.L * self.L + self.L

    def finish(self, rnd: int, total: np.ndarray, clear: dict[int, list[float]], participants: list[int]) -> dict:
        L = self.L
        self.totals = torch.from_numpy(total[: L * L].reshape(L, L)).to(torch.float32)
        self.holders = torch.from_numpy(np.rint(total[L * L :])).to(torch.int32).clamp_min(0)
        self.from_round = rnd
        self.included = set(participants)
        return {"fd_labels_reported": float(self.holders.sum()) / max(1, len(participants)), **self.server.record_releases(participants)}

    def state_dict(self) -> dict:
        return {"totals": self.totals.clone(), "holders": self.holders.clone(), "from_round": self.from_round, "included": sorted(self.included)}

    def load_state_dict(self, s: dict) -> None:
        self.totals, self.holders = s["totals"].clone(), s["holders"].clone()
        self.from_round, self.included = int(s["from_round"]), set(int(c) for c in s["included"])


class FD(Algorithm):
    name = "fd"
    summation = FDSums
    client_class = FDClient
    has_global_model = False
    CONFIG = sections.FD

    #: each device keeps its own model between rounds (``featherfl.checks.check_client_state_memory``)
    keeps_client_models = True

    @classmethod
    def memory_needs(cls, cfg, input_shape, num_classes):
        """An L x L logit table per client (sums, counts and the teacher), held by the server."""
        return [(cfg["clients"] * num_classes * num_classes * 4 * 3, f"fd with {num_classes:,} classes and {cfg['clients']:,} clients (an L x L logit table per client)")]

    @classmethod
    def validate(cls, cfg) -> None:
        known = model_names()
        for name in cfg["fd.models"]:
            if name not in known:
                raise ConfigError(f"config key 'fd.models': got {name!r}, expected names from {', '.join(known)}")
        if cfg["fd.logit_noise"] > 0:
            try:
                import opacus  # noqa: F401
            except ImportError:
                raise ConfigError("config key 'fd.logit_noise': the privacy accountant needs the dp extra: pip install 'featherfl[dp]'") from None

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        L, m = ctx.num_classes, ctx.num_clients
        self.vectors = torch.zeros(m, L, L)
        self.present = torch.zeros(m, L, dtype=torch.bool)
        self.releases = torch.zeros(m, dtype=torch.int64)
        rng = np.random.default_rng(derive_seed(ctx.seed, "fd-reference-client"))
        self.reference_client = int(rng.integers(m))
        self.aggregator = Aggregator.from_section(self.cfg.section("fd"))

    def configure(self, rnd, client_ids):
        a = self.aggregator
        ids = list(client_ids)  # only the round's devices: a teacher costs O(L^2) beside one O(M L^2) total
        teachers, contributors = leave_one_out(self.vectors, self.present, a.rule, a.trim_beta, a.clip_norm, ids=ids)
        return {cid: TeacherDown(teachers[k].contiguous(), contributors[k].contiguous()) for k, cid in enumerate(ids)}

    def uplink_specs(self, rnd, cid):
        L = self.ctx.num_classes
        if self.cfg["fd.logit_noise"] > 0:
            vec = TensorSpec("float32", (L, L), max_abs=NOISY_MAX_ABS)
        else:
            vec = TensorSpec("float32", (L, L), min_value=0.0, max_value=1.0)
        return {LogitsUp.KIND: Spec(LogitsUp, {"logits": vec, "counts": TensorSpec("int32", (L,), min_value=0, max_value=MAX_COUNT)})}

    def aggregate(self, rnd, replies):
        """Keep each device's latest per-label vectors; teachers are built from them in ``configure``."""
        for cid, r in replies.items():
            self.vectors[cid] = r.logits
            self.present[cid] = r.counts > 0
            self.releases[cid] += 1
        out = {"fd_labels_reported": float(self.present[sorted(replies)].sum(1).float().mean())}
        if self.cfg["fd.logit_noise"] > 0:
            out["dp_epsilon"] = dp_epsilon(self.cfg["fd.logit_noise"], int(self.releases.max()), self.cfg["fd.noise_delta"])
        return out

    def summarize_client_eval(self, per_client: dict[int, dict]) -> dict:
        """Mean / min / max over devices that have trained, plus the seed-chosen reference device."""
        done = {c: m for c, m in per_client.items() if m.get("accuracy") is not None}
        if not done:
            return {"accuracy": None, "loss": None}
        accs = [m["accuracy"] for m in done.values()]
        ref = done.get(self.reference_client, {})
        out = {
            "accuracy": sum(accs) / len(accs),
            "loss": sum(m["loss"] for m in done.values()) / len(done),
            "accuracy_min": min(accs),
            "accuracy_max": max(accs),
            "accuracy_reference": ref.get("accuracy"),
            "reference_client": self.reference_client,
            "clients_evaluated": len(done),
        }
        if len(per_client) <= 32:
            out["accuracy_per_client"] = {str(c): m["accuracy"] for c, m in sorted(done.items())}
        return out

    def model_parameters(self) -> int:
        return max(self._parameters_per_model().values())

    def _parameters_per_model(self) -> dict[str, int]:
        names = self.cfg["fd.models"] or [self.cfg["model.name"]]
        return {n: count_parameters(self.ctx.build_model(n)) for n in dict.fromkeys(names)}

    def summary_extra(self) -> dict:
        out = {"client_models": {str(c): model_for(self.cfg, c) for c in range(min(self.ctx.num_clients, 32))}, "model_parameters_per_model": self._parameters_per_model()}
        out["reference_client"] = self.reference_client
        if self.cfg["fd.logit_noise"] > 0:
            out["dp_epsilon"] = dp_epsilon(self.cfg["fd.logit_noise"], int(self.releases.max()), self.cfg["fd.noise_delta"])
            out["dp_delta"] = self.cfg["fd.noise_delta"]
        return out

    def record_releases(self, participants: list[int]) -> dict:
        """Count one more release of each participant's vectors (``FDSums``); the privacy spent so far."""
        for c in participants:
            self.releases[c] += 1
        if self.cfg["fd.logit_noise"] > 0:
            return {"dp_epsilon": dp_epsilon(self.cfg["fd.logit_noise"], int(self.releases.max()), self.cfg["fd.noise_delta"])}
        return {}

    def state_dict(self):
        return {"vectors": self.vectors.clone(), "present": self.present.clone(), "releases": self.releases.clone()}

    def load_state_dict(self, state):
        self.vectors = state["vectors"].clone()
        self.present = state["present"].clone()
        self.releases = state["releases"].clone()
