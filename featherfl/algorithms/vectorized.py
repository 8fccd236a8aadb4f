"""Many clients' local training as one batched computation (``engine.vectorize``).

Clients that share an architecture run the same sequence of small matrix products,
one client after another; on a CPU most of that time is Python and dispatch overhead,
not arithmetic. Here the clients' parameters are stacked along a leading client axis
and every local step of every client is one ``torch.func.vmap`` of
``functional_call`` + ``grad`` (the shape of FedJAX's ``for_each_client``). For a plain MLP
(``nn.Sequential`` of Flatten, Linear, ReLU) the forward pass issues the same operations vmap
would, without vmap's per-call cost, once a check has found them bit for bit equal; under
cross-entropy its whole step runs without the autograd engine (the backward kernels autograd
would call, in its order, again checked bit for bit once per shape), and a step computes only
the clients still training: the cohort is sorted by steps, so they are the first ones, and a
client of 5 batches in a call with one of 90 costs 5 steps, not 90 (:func:`computes_only_active`).

Each client keeps exactly what the sequential loop (``training.train_epochs``) gives
it: its own data order (the same seeded generator, consumed in the same order), its
own number of steps (clients that finish early stop updating: an ``active`` mask, or, for the
plain MLP, a prefix of the clients that shrinks),
its own last short batch (batches are padded to a common size and the padding is
masked out of the mean loss), and its own optimiser state (SGD momentum buffers and
Adam moments are stacked per client and follow ``torch.optim``'s update rules). The
results match the sequential path within float rounding; tests hold that.

Only models whose forward pass is a pure function of parameters and input qualify
(:func:`supports`): no buffers that training mutates (BatchNorm running statistics)
and no dropout, whose random masks could not match the sequential path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from featherfl.algorithms import conv_batched
from featherfl.algorithms.training import batches


def supports(model: nn.Module) -> bool:
    """Whether ``model`` can be trained vectorised with results equal to the sequential loop
    (on the CPU; on other devices clients train one by one)."""
    from featherfl.devices import model_device

    if model_device(model).type != "cpu":
        return False
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)):
            return False
    return True


#: Memory one batched call may take for the clients' stacked tensors (weights, gradients, optimiser
#: state, a temporary: 5 copies per client) and their padded data. A round whose clients need more
#: is trained in several batched calls (:func:`client_groups`), so many clients of a large model
#: cannot exhaust the machine's memory and end the run.
MEMORY_BUDGET = 1 << 30


def client_groups(sizes: list[int], params: int, sample_numel: int, budget: int | None = None) -> list[list[int]]:
    """Indexes of ``sizes`` (samples per client) split, in order, into groups whose batched call
    stays within ``budget`` bytes: 4 bytes x (5 x ``params`` + the group's largest client's samples x
    ``sample_numel``) per client. A client that alone exceeds the budget forms its own group."""
    budget = MEMORY_BUDGET if budget is None else budget
    groups: list[list[int]] = []
    group: list[int] = []
    widest = 0
    for i, n in enumerate(sizes):
        w = max(widest, n)
        if group and 4 * (len(group) + 1) * (5 * params + w * sample_numel) > budget:
            groups.append(group)
            group, w = [], n
        group.append(i)
        widest = w
    if group:
        groups.append(group)
    return groups


#: Stacked weights (4 bytes x parameters x clients) that one batched call of a plain MLP holds at
#: most. Its steps stream every client's weights and gradients, which stay in the cache from one
#: kernel to the next when they are a few MiB; smaller calls pay more steps of per-call overhead
#: (a call runs to its longest client's steps). For the 4,810-parameter MLP this makes calls of at
#: most 163 clients: a group of 250 trains as 2 calls of 125, a cohort of 500 as 4
#: (``benchmarks/results/call_size.md`` has the curve on one core).
CACHE_BUDGET = 3 << 20


def cache_parts(model: nn.Module, group: list[int]) -> list[list[int]]:
    """``group`` (clients, in order) cut into the fewest near-equal parts whose stacked weights fit
    :data:`CACHE_BUDGET`, for a plain MLP (:func:`_mlp_plan`, every parameter trained); ``[group]``
    for any other model. A plain MLP's client gets the same bits whatever clients share its call
    (:func:`computes_only_active`), so the parts change the time only."""
    params = sum(p.numel() for p in model.parameters())
    if not group or _mlp_plan(model, [k for k, _ in model.named_parameters()]) is None:
        return [group]
    most = max(1, CACHE_BUDGET // (4 * max(params, 1)))
    parts = -(-len(group) // most)
    size, extra = divmod(len(group), parts)
    out, at = [], 0
    for i in range(parts):
        n = size + (1 if i < extra else 0)
        out.append(group[at : at + n])
        at += n
    return out


@dataclass
class ClientRun:
    """One client's input to a vectorised training call."""

    start: dict[str, torch.Tensor]  # the trainable tensors it starts from (name -> tensor)
    x: torch.Tensor
    y: torch.Tensor
    gen: torch.Generator  # the same generator the sequential path would use for its batch order


def _schedules(runs: list[ClientRun], epochs: int, batch_size: int, max_steps: int, per_client: list[int] | None = None) -> list[list[torch.Tensor]]:
    """Each client's batch indices, drawn exactly as ``train_epochs`` draws them."""
    out = []
    for i, r in enumerate(runs):
        steps: list[torch.Tensor] = []
        for _ in range(epochs if per_client is None else per_client[i]):
            steps.extend(batches(len(r.y), batch_size, r.gen))
        out.append(steps[:max_steps] if max_steps else steps)
    return out


def _step_counts(runs: list[ClientRun], epochs: int, batch_size: int, max_steps: int, per_client: list[int] | None) -> tuple | None:
    """(rows, epochs, batch size, steps per epoch, steps) per client, the longest client's steps T and
    the widest batch B, as :func:`_schedules` would give them; None when a client holds no rows or no
    client takes a step."""
    ns = [len(r.y) for r in runs]
    if not ns or min(ns) == 0:
        return None
    eps = [epochs if per_client is None else per_client[i] for i in range(len(runs))]
    bss = [n if batch_size <= 0 else batch_size for n in ns]
    per_epoch = [-(-n // bs) for n, bs in zip(ns, bss)]
    n_steps = [min(e * s, max_steps) if max_steps else e * s for e, s in zip(eps, per_epoch)]
    T = max(n_steps)
    if T == 0:
        return None
    B = max(min(n, bs) for n, bs, k in zip(ns, bss, n_steps) if k)
    return ns, eps, bss, per_epoch, n_steps, T, B


def _placed_rows(runs: list[ClientRun], counts_: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every client's rows in the order its batches take them (one ``randperm`` per epoch from the
    client's generator, as ``batches`` draws it, cut after its last step), and for each row its
    client, step and slot in that step's batch: (rows, client, step, slot, number of rows per client)."""
    ns, eps, bss, per_epoch, n_steps, T, B = counts_
    values, owners, step0, sizes, chunk_bs = [], [], [], [], []  # one entry per (client, epoch) used
    for c, r in enumerate(runs):
        n, bs, s, k = ns[c], bss[c], per_epoch[c], n_steps[c]
        perms = [torch.randperm(n, generator=r.gen) for _ in range(eps[c])]  # every epoch's draw, as batches() makes it
        if k == 0:
            continue
        full_epochs, rest = divmod(k, s)
        used = perms[:full_epochs] + ([perms[full_epochs][: min(rest * bs, n)]] if rest else [])
        for e, perm in enumerate(used):
            values.append(perm)
            owners.append(c)
            step0.append(e * s)
            sizes.append(perm.shape[0])
            chunk_bs.append(bs)
    # row j of a chunk goes to step j // bs of its epoch, slot j % bs: all chunks at once
    lengths = torch.tensor(sizes)
    starts = torch.cumsum(lengths, 0) - lengths
    j = torch.arange(int(lengths.sum())) - torch.repeat_interleave(starts, lengths)
    per_row_bs = torch.repeat_interleave(torch.tensor(chunk_bs), lengths)
    step = torch.repeat_interleave(torch.tensor(step0), lengths) + torch.div(j, per_row_bs, rounding_mode="floor")
    return torch.cat(values), torch.repeat_interleave(torch.tensor(owners), lengths), step, j % per_row_bs, torch.tensor(ns)


def _ragged_schedule(runs: list[ClientRun], epochs: int, batch_size: int, max_steps: int, per_client: list[int] | None) -> tuple[torch.Tensor, torch.Tensor, list[int], int] | None:
    """Every step's batch indices and mask (steps x clients x B, padded with 0 and masked), each
    client's steps and B, drawn exactly as :func:`_schedules` then :func:`_step_indices` give them
    (one ``randperm`` per client and epoch from the client's generator, cut into batches of
    ``batch_size``, the last one short, at most ``max_steps`` steps), but placed with a few tensor
    operations per client instead of one tensor per batch. None when a client holds no rows."""
    counts_ = _step_counts(runs, epochs, batch_size, max_steps, per_client)
    if counts_ is None:
        return None
    n_steps, T, B = counts_[4], counts_[5], counts_[6]
    C = len(runs)
    rows, owner, step, slot, _ = _placed_rows(runs, counts_)
    where = (owner * T + step) * B + slot
    idx = torch.zeros(C * T * B, dtype=torch.long)
    mask = torch.zeros(C * T * B)
    idx[where] = rows
    mask[where] = 1.0
    return idx.view(C, T, B).transpose(0, 1).contiguous(), mask.view(C, T, B).transpose(0, 1).contiguous(), n_steps, B


def _active_schedule(runs: list[ClientRun], epochs: int, batch_size: int, max_steps: int, per_client: list[int] | None) -> tuple | None:
    """The batches of a call that computes only the clients still training, with no (steps x
    clients) grid: the clients sorted by steps, most first (ties in the caller's order), so that the
    clients training at step t are the first ``counts[t]``; step t's batches are entries
    ``offsets[t]`` to ``offsets[t] + counts[t] * B`` of ``rows`` and ``mask`` (a client's B slots
    after the other's). ``rows`` index the sorted clients' rows laid end to end, and a padded slot
    indexes the row just past them (a zero row, label 0, as a padded layout holds), masked out.
    Returns (order, steps of the sorted clients, B, counts, offsets, rows, mask), drawn exactly as
    :func:`_schedules` draws them; None where :func:`_step_counts` is None."""
    counts_ = _step_counts(runs, epochs, batch_size, max_steps, per_client)
    if counts_ is None:
        return None
    ns, eps, bss, per_epoch, n_steps, T, B = counts_
    order = sorted(range(len(runs)), key=lambda c: -n_steps[c])
    ranked = tuple([v[c] for c in order] for v in (ns, eps, bss, per_epoch, n_steps)) + (T, B)
    rows, pos, step, slot, sizes = _placed_rows([runs[c] for c in order], ranked)
    steps_sorted = ranked[4]
    # clients still training at each step: all but those whose steps end at or before it
    ended = torch.bincount(torch.tensor(steps_sorted), minlength=T + 1)[:T]
    counts = len(runs) - torch.cumsum(ended, 0)
    offsets = (torch.cumsum(counts, 0) - counts) * B
    total = int(counts.sum()) * B
    first_row = torch.cumsum(sizes, 0) - sizes
    where = offsets[step] + pos * B + slot
    placed = torch.full((total,), int(sizes.sum()), dtype=torch.long)  # padding: the zero row after every client's rows
    mask = torch.zeros(total)
    placed[where] = rows + first_row[pos]
    mask[where] = 1.0
    return order, steps_sorted, B, counts.tolist(), offsets.tolist(), placed, mask


def _active_part(idx: torch.Tensor, mask: torch.Tensor, active: torch.Tensor, sizes: torch.Tensor) -> tuple:
    """:func:`_active_schedule`'s (counts, offsets, rows, mask) from a (steps x clients x B) grid
    whose clients are sorted by steps, most first (``active``: steps x clients)."""
    counts = active.sum(1).tolist()
    B = idx.shape[2]
    first_row = (torch.cumsum(sizes, 0) - sizes).view(-1, 1)
    pad = int(sizes.sum())
    rows = torch.cat([torch.where(mask[t, :n].bool(), idx[t, :n] + first_row[:n], pad).reshape(-1) for t, n in enumerate(counts)])
    kept = torch.cat([mask[t, :n].reshape(-1) for t, n in enumerate(counts)])
    offsets = [0]
    for n in counts[:-1]:
        offsets.append(offsets[-1] + n * B)
    return counts, offsets, rows, kept


def _uniform_schedule(runs: list[ClientRun], epochs: int, batch_size: int, max_steps: int, per_client: list[int] | None) -> tuple[torch.Tensor, int, int] | None:
    """When every client holds the same number of samples, a multiple of the batch size, and trains
    the same whole epochs (a cross-device cohort): (every step's batch indices, steps x clients x B,
    steps, B), drawn exactly as ``_schedules`` draws them (one permutation per epoch from the
    client's generator, cut into consecutive batches) but without one tensor per batch. None otherwise."""
    n = len(runs[0].y)
    bs = n if batch_size <= 0 else batch_size
    if per_client is not None or n == 0 or n % bs or any(len(r.y) != n for r in runs):
        return None
    steps = epochs * (n // bs)
    if steps == 0 or (max_steps and max_steps < steps):
        return None
    orders = torch.stack([torch.cat([torch.randperm(n, generator=r.gen) for _ in range(epochs)]) if epochs > 1 else torch.randperm(n, generator=r.gen) for r in runs])
    return orders.view(len(runs), steps, bs).transpose(0, 1), steps, bs


def _keep(mask: torch.Tensor | None, updated: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``updated`` where the client is active, ``old`` where it has finished (None: all active)."""
    return updated if mask is None else torch.where(mask, updated, old)


class _Optimizer:
    """torch.optim.SGD / Adam update rules over client-stacked tensors (``opts`` as ``make_optimizer`` reads them)."""

    def __init__(self, params: dict[str, torch.Tensor], opts: dict):
        self.kind = opts["optimizer"]
        self.lr = float(opts["lr"])
        self.wd = float(opts.get("weight_decay", 0.0))
        self.momentum = float(opts.get("momentum", 0.0))
        self.betas = tuple(opts.get("betas", (0.9, 0.999)))
        self.eps = float(opts.get("eps", 1e-8))
        self.state: dict[str, dict[str, torch.Tensor]] = {k: {} for k in params}
        self.t = 0
        #: names of the parameters this optimiser updates in place (tensors its caller owns and hands
        #: back each step, e.g. views into one buffer); others get a new tensor per step
        self.owned: set[str] = set()

    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], active: torch.Tensor | None, n: int | None = None) -> dict[str, torch.Tensor]:
        """One step for every client; clients with ``active`` False keep parameters and state. With
        ``n``, ``params`` and ``grads`` hold only the first ``n`` clients (every one of them active)
        and the state of the others is left as it is."""
        self.t += 1
        every = n is not None or bool(active.all())
        if every and self.kind == "sgd" and not self.momentum and not self.wd and self.owned.issuperset(params):
            # plain SGD on tensors it owns: p + (-lr) g for all of them in one call, as torch.optim.SGD
            # updates (``add_`` with ``alpha``: the same kernel, so the same rounding) and in one pass
            # over the weights, where a product then a subtraction took two and a temporary
            torch._foreach_add_(list(params.values()), [grads[k] for k in params], alpha=-self.lr)
            return params
        new = {}
        for k, p in params.items():
            g = grads[k]
            if self.wd:
                g = g.add(p, alpha=self.wd)  # as torch.optim.SGD adds its weight decay
            st = self.state[k]
            mask = None if every else active.view([-1] + [1] * (p.dim() - 1))
            if self.kind == "adam":
                b1, b2 = self.betas
                m = st.get("m", torch.zeros_like(p))
                v = st.get("v", torch.zeros_like(p))
                if n is not None:
                    st["m"], st["v"] = m, v  # full-size, written a prefix at a time
                    m, v = m[:n], v[:n]
                m2 = _keep(mask, m * b1 + (1 - b1) * g, m)
                v2 = _keep(mask, v * b2 + (1 - b2) * g * g, v)
                if n is None:
                    st["m"], st["v"] = m2, v2
                else:
                    m.copy_(m2)
                    v.copy_(v2)
                # every active client is at the same step count: all start at step 1 together
                c1 = 1 - b1**self.t
                c2 = 1 - b2**self.t
                upd = (m2 / c1) / ((v2 / c2).sqrt() + self.eps)
                new[k] = _keep(mask, p - self.lr * upd, p)
            else:
                if self.momentum:
                    buf = st.get("buf")
                    if buf is None:
                        st["buf"] = g
                    elif mask is None:
                        g = (buf if n is None else buf[:n]).mul_(self.momentum).add_(g)  # in place: the same two roundings as buf * m + g
                    else:
                        st["buf"] = g = _keep(mask, buf * self.momentum + g, buf)
                if mask is None and k in self.owned:
                    # in place, as torch.optim.SGD updates (``add_`` with ``alpha``: its rounding), in one
                    # pass and without a (clients x entries) temporary
                    new[k] = p.add_(g, alpha=-self.lr)
                    continue
                new[k] = _keep(mask, torch.add(p, g, alpha=-self.lr), p)
            if k in self.owned:
                new[k] = p.copy_(new[k])
        return new


def _step_indices(schedules: list[list[torch.Tensor]], T: int, C: int, B: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every step's batch indices (steps x clients x B, padded with 0) and the mask of the entries
    that are real samples, from the clients' schedules, with a handful of tensor operations
    rather than one small copy per (step, client)."""
    idx = torch.zeros(T * C * B, dtype=torch.long)
    mask = torch.zeros(T * C * B)
    batches_ = [b for s in schedules for b in s]
    if batches_:
        lengths = torch.tensor([b.shape[0] for b in batches_])
        slot = torch.tensor([(t * C + c) * B for c, s in enumerate(schedules) for t in range(len(s))])
        firsts = torch.cumsum(lengths, 0) - lengths  # where each batch starts in the concatenation
        within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(firsts, lengths)
        where = torch.repeat_interleave(slot, lengths) + within
        idx[where] = torch.cat(batches_).long()
        mask[where] = 1.0
    return idx.view(T, C, B), mask.view(T, C, B)


def _has_tied_tensors(model: nn.Module) -> bool:
    """Whether one tensor appears under two names among the model's parameters and buffers."""
    seen: set[int] = set()
    for _, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        if id(t) in seen:
            return True
        seen.add(id(t))
    return False


def _padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors stacked along a new first axis, each zero-padded along its first axis to the longest."""
    n = max(t.shape[0] for t in tensors)
    if all(t.shape[0] == n and t.dtype == tensors[0].dtype for t in tensors):
        return torch.stack(tensors)
    out = torch.zeros((len(tensors), n) + tuple(tensors[0].shape[1:]), dtype=tensors[0].dtype)
    for c, t in enumerate(tensors):
        out[c, : t.shape[0]] = t
    return out


# --- the batched forward of a plain MLP, without vmap's per-call overhead --------------------------

#: (layers, input shape) -> whether the direct forward gave vmap's outputs and gradients bit for bit
_DIRECT_AGREES: dict[tuple, bool] = {}


def _mlp_plan(model: nn.Module, trained: list[str]) -> tuple | None:
    """The layers of a model that is an ``nn.Sequential`` of ``Flatten`` (the default dims),
    ``Linear`` (with bias, every tensor trained) and ``ReLU`` only: ``(("flatten",), ("linear",
    weight name, bias name), ("relu",), ...)``; None for any other model."""
    if type(model) is not nn.Sequential:
        return None
    plan = []
    for name, m in model.named_children():
        if type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1:
            plan.append(("flatten",))
        elif type(m) is nn.ReLU and not m.inplace:
            plan.append(("relu",))
        elif type(m) is nn.Linear and m.bias is not None and f"{name}.weight" in trained and f"{name}.bias" in trained:
            plan.append(("linear", f"{name}.weight", f"{name}.bias"))
        else:
            return None
    if len(trained) != 2 * sum(1 for step in plan if step[0] == "linear"):
        return None
    return tuple(plan)


def computes_only_active(model: nn.Module) -> bool:
    """Whether :func:`train_clients_stacked` (every parameter trained, cross-entropy, no ``observe``)
    computes at each step only the clients still training, so a client's cost is its own steps
    and not its group's longest: a plain MLP (:func:`_mlp_plan`) or a small conv net that
    ``conv_batched`` steps by hand."""
    return _only_active(model, [k for k, _ in model.named_parameters()])


def _only_active(model: nn.Module, trained: list[str]) -> bool:
    # the MLP's products, and the conv step's per-sample kernels over the real samples, give each
    # client the same bits whatever the clients beside it; a vmapped convolution does not (it becomes
    # one grouped convolution whose rounding follows the group count)
    return _mlp_plan(model, trained) is not None or conv_batched.plan(model, trained) is not None


def _mlp_forward(plan: tuple, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The forward pass of every client at once, as the very operations ``vmap`` of the model
    issues for it: a ``Linear`` is ``bias * 1 + bmm(x, weight^T)`` over the client axis, so the
    outputs, and the gradients autograd derives from the same operations, are the same bits
    (:func:`_direct_agrees` checks that once per model and input shape)."""
    for step in plan:
        if step[0] == "flatten":
            x = x.flatten(2)
        elif step[0] == "relu":
            x = torch.relu(x)
        else:
            w, b = p[step[1]], p[step[2]]
            x = torch.add(torch.mul(b, 1).unsqueeze(1), torch.bmm(x, w.transpose(1, 2)))
    return x


def _direct_agrees(plan: tuple, batched_forward: Callable, leaves: dict[str, torch.Tensor], x: torch.Tensor) -> bool:
    """Whether :func:`_mlp_forward` gives ``batched_forward``'s (vmap's) outputs and parameter
    gradients bit for bit, on copies of these tensors; asked once per layer plan and input shape
    and remembered (it is a property of this torch build's vmap rules and kernels)."""
    key = (plan, tuple(x.shape[1:]), tuple((k, tuple(v.shape[1:])) for k, v in leaves.items()))
    known = _DIRECT_AGREES.get(key)
    if known is not None:
        return known
    gen = torch.Generator().manual_seed(0)  # never the global generator: training draws nothing here
    results = []
    for fn in (lambda p: batched_forward(p, x), lambda p: _mlp_forward(plan, p, x)):
        p = {k: v.detach().clone().requires_grad_(True) for k, v in leaves.items()}
        with torch.enable_grad():
            out = fn(p)
            upstream = torch.randn(out.shape, generator=gen.manual_seed(0))
            # a scalar to differentiate (explicit grad_outputs would import sympy, slowly, in torch 2.x)
            grads = torch.autograd.grad((out * upstream).sum(), list(p.values()))
        results.append((out.detach(), grads))
    (a, ga), (b, gb) = results
    agrees = torch.equal(a, b) and all(torch.equal(u, v) for u, v in zip(ga, gb))
    _DIRECT_AGREES[key] = agrees
    return agrees


#: (layers, shapes, padded or not) -> whether :func:`_mlp_step` gave autograd's step bit for bit
_MANUAL_AGREES: dict[tuple, bool] = {}


#: the ``total_weight`` argument of ``nll_loss_backward`` (unused without class weights)
_ONE = torch.ones(())


def _mlp_layers(plan: tuple) -> tuple | None:
    """``plan`` as (flatten first?, ((weight, bias, ReLU after?), ...)) when it is an optional
    Flatten followed by Linear layers each optionally followed by one ReLU (the shape
    :func:`_mlp_step` computes); None otherwise."""
    steps = list(plan)
    flatten = bool(steps) and steps[0] == ("flatten",)
    if flatten:
        steps = steps[1:]
    layers = []
    for st in steps:
        if st[0] == "linear":
            layers.append([st[1], st[2], False])
        elif st[0] == "relu" and layers and not layers[-1][2]:
            layers[-1][2] = True
        else:
            return None
    return (flatten, tuple(tuple(layer) for layer in layers)) if layers else None


def _mlp_step(layers: tuple, p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, mb: torch.Tensor, denom: torch.Tensor, full: bool, up: torch.Tensor | None = None, want_loss: bool = True):
    """One step of every client of a plain MLP (:func:`_mlp_layers`) under mean cross-entropy,
    forward and backward, without the autograd engine: the forward is :func:`_mlp_forward`'s
    operations (a bias times 1 is the bias) and the backward calls, in the order the engine would,
    the very kernels autograd's formulas call for them (``nll_loss_backward``,
    ``_log_softmax_backward_data``, ``threshold_backward``, the two ``bmm`` of a product, the
    bias's ``sum``). ``up`` is the gradient of the summed per-client mean losses w.r.t. each
    sample's loss, ``mb / denom`` (computed here when not given). It returns what ``step``
    returns: (gradients by name, per-client mean losses or None without ``want_loss``, logits);
    :func:`_manual_agrees` checks the bits against autograd once per shape."""
    flatten, stack = layers
    x = xb.flatten(2) if flatten else xb
    ins, outs = [], []  # each layer's input, and its ReLU's output
    for w, b, relu in stack:
        ins.append(x)
        x = torch.add(p[b].unsqueeze(1), torch.bmm(x, p[w].transpose(1, 2)))
        if relu:
            x = torch.relu(x)
        outs.append(x)
    logits = x
    C, B, K = logits.shape
    flat_logits = logits.view(C * B, K)
    logp = torch.log_softmax(flat_logits, 1)
    target = yb.view(C * B)
    loss = None
    if want_loss:
        per = F.nll_loss(logp, target, reduction="none").view(C, B)
        loss = (per if full else per * mb).sum(1) / denom
    # backward of loss.sum(): d/d(per) = 1 / denom for a real sample, 0 for padding
    if up is None:
        up = mb / denom.unsqueeze(1)
    g = torch.ops.aten.nll_loss_backward(up.view(C * B), logp, target, None, 0, -100, _ONE)
    g = torch.ops.aten._log_softmax_backward_data(g, logp, 1, flat_logits.dtype).view(C, B, K)
    grads: dict[str, torch.Tensor] = {}
    for i in range(len(stack) - 1, -1, -1):
        w, b, relu = stack[i]
        if relu:
            g = torch.ops.aten.threshold_backward(g, outs[i], 0)
        grads[b] = g.sum(1)
        grads[w] = ins[i].transpose(1, 2).bmm(g).transpose(1, 2)
        if i:  # the first layer's input is the data: no gradient
            g = g.bmm(p[w])
    return grads, loss, logits


def _manual_agrees(layers: tuple, autograd_step: Callable, args: tuple) -> bool:
    """Whether :func:`_mlp_step` gives ``autograd_step``'s gradients, losses and logits bit for bit
    on these inputs; asked once per layer plan, shapes (clients aside) and padding, and remembered."""
    p, xb, yb, mb, denom, full = args
    key = (layers, tuple(xb.shape[1:]), tuple((k, tuple(v.shape[1:])) for k, v in p.items()), bool(full))
    known = _MANUAL_AGREES.get(key)
    if known is not None:
        return known
    (ga, la, oa), (gb, lb, ob) = autograd_step(*args), _mlp_step(layers, *args)
    agrees = ga.keys() == gb.keys() and torch.equal(la, lb) and torch.equal(oa, ob) and all(torch.equal(ga[k], gb[k]) for k in ga)
    _MANUAL_AGREES[key] = agrees
    return agrees


def train_clients_stacked(
    model: nn.Module,
    runs: list[ClientRun],
    opts: dict,
    epochs: int,
    batch_size: int,
    max_steps: int = 0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    observe: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    epochs_per_client: list[int] | None = None,
    train_loss: bool = True,
) -> tuple[torch.Tensor, list[dict]]:
    """Train every client in ``runs`` from its ``start`` tensors; return the final tensors as one
    float32 (clients x trainable entries) tensor, each row the client's ``start`` tensors
    flattened and concatenated in their order, and the metrics per client.

    ``model`` supplies the architecture and every tensor not in ``start`` (frozen
    parameters and buffers, shared by all clients). ``loss_fn(logits, y)`` takes every
    client's (clients x batch x classes) outputs and (clients x batch) labels, returns the
    (clients x batch) per-sample losses and replaces cross-entropy (e.g. a distillation term
    with a teacher per client). ``observe(logits, y, mask)`` sees every step's
    detached (clients x batch x classes) outputs before the update, with the mask of the samples
    that count (padding and finished clients are 0), as a sequential loop sees its batch's
    outputs (e.g. FD's per-label output sums). ``epochs_per_client`` overrides ``epochs`` per client.
    Without ``train_loss`` the metrics hold only each client's steps, and a step may skip its loss.
    """
    names = list(runs[0].start)
    back: list[int] | None = None  # where each caller's client went, when they were reordered
    # a step may compute only the clients still training (:func:`_only_active`)
    prefix = loss_fn is None and observe is None and _only_active(model, names)
    uniform = _uniform_schedule(runs, epochs, batch_size, max_steps, epochs_per_client)
    layout = None  # the batches of the clients still training, step by step (``prefix`` only)
    if uniform is not None:
        idx, T, B = uniform
        n_steps = [T] * len(runs)
        mask = torch.ones(idx.shape)
    elif prefix and (layout := _active_schedule(runs, epochs, batch_size, max_steps, epochs_per_client)) is not None:
        # clients by steps, most first: the clients still training at a step are then the first
        # ones, and a step computes and updates only them (a slice, no mask); each client's numbers
        # are its own whatever its position, and the results go back in the caller's order
        order, n_steps, B = layout[0], layout[1], layout[2]
        T = len(layout[3])
        if order != list(range(len(runs))):
            runs = [runs[c] for c in order]
            back = sorted(range(len(order)), key=order.__getitem__)
    else:
        ragged = _ragged_schedule(runs, epochs, batch_size, max_steps, epochs_per_client)
        if ragged is not None:
            idx, mask, n_steps, B = ragged
        else:
            schedules = _schedules(runs, epochs, batch_size, max_steps, epochs_per_client)
            n_steps = [len(s) for s in schedules]
            B = max((b.shape[0] for s in schedules for b in s), default=1)
            idx, mask = _step_indices(schedules, max(n_steps), len(runs), B)
        T = max(n_steps)
        if prefix:  # clients by steps, most first, as above
            order = sorted(range(len(runs)), key=lambda c: -n_steps[c])
            if order != list(range(len(runs))):
                runs, n_steps = [runs[c] for c in order], [n_steps[c] for c in order]
                idx, mask = idx[:, order], mask[:, order]
                back = sorted(range(len(order)), key=order.__getitem__)
    C = len(runs)
    fixed = {k: v.detach() for k, v in list(model.named_parameters()) + list(model.named_buffers()) if k not in runs[0].start}
    shapes = [runs[0].start[k].shape for k in names]
    sizes = [int(torch.Size(sh).numel()) for sh in shapes]

    def unflatten(f: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: part.view((f.shape[0],) + tuple(sh)) for k, sh, part in zip(names, shapes, f.split(sizes, dim=1))}

    # one (clients x all trainable entries) tensor: the optimiser's update is a handful of ops;
    # clients that start from the same tensors (one global model) share one flattening
    starts: dict[int, torch.Tensor] = {}
    for r in runs:
        if id(r.start) not in starts:
            starts[id(r.start)] = torch.cat([r.start[k].detach().reshape(-1).float() for k in names])
    flat = torch.stack([starts[id(r.start)] for r in runs])
    # each trainable tensor, client-stacked, as a view into ``flat``: the gradients come back per
    # tensor (no copy into one flat gradient) and the optimiser updates ``flat`` through the views
    params = unflatten(flat)
    opt = _Optimizer(params, opts)
    opt.owned.update(names)  # made here, never seen by the caller until the end: stepped in place

    # a model without tied tensors (one tensor under two names) needs no untying on every call
    tied = _has_tied_tensors(model)

    def forward(p, xb):
        return functional_call(model, {**fixed, **p}, (xb,), tie_weights=tied)

    batched_forward = vmap(forward)
    plan = _mlp_plan(model, names)
    # a plain MLP under cross-entropy whose step autograd's kernels give without the engine
    layers = _mlp_layers(plan) if plan is not None and loss_fn is None else None
    verdicts: dict[bool, bool] = {}  # padded step or not -> whether the manual step is used

    def step(p, xb, yb, mb, denom, full, up=None):
        if layers is not None:
            use = verdicts.get(full)
            if use is None:
                use = verdicts[full] = _manual_agrees(layers, autograd_step, (p, xb, yb, mb, denom, full))
            if use:
                return _mlp_step(layers, p, xb, yb, mb, denom, full, up, train_loss)
        return autograd_step(p, xb, yb, mb, denom, full)

    def autograd_step(p, xb, yb, mb, denom, full):
        """Per-client gradients of per-client mean losses, from one batched forward and backward:
        the clients' losses are independent, so the gradient of their sum w.r.t. client c's
        slice of a stacked tensor is client c's own gradient."""
        leaves = {k: v.detach().requires_grad_(True) for k, v in p.items()}
        with torch.enable_grad():
            logits = _mlp_forward(plan, leaves, xb) if plan is not None and _direct_agrees(plan, batched_forward, leaves, xb) else batched_forward(leaves, xb)
            if loss_fn is None:
                per = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(yb.shape)
            else:
                per = loss_fn(logits, yb)
            # x * 1 is x exactly: a step without padding needs no mask product
            loss = (per if full else per * mb).sum(1) / denom
            grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        return dict(zip(leaves, grads)), loss.detach(), logits.detach()
    # a small conv net: stepped by hand on the real samples (checked against autograd once)
    lowered = conv_batched.plan(model, names) if loss_fn is None else None
    if lowered is not None:
        step = conv_batched.stepper(lowered, step, model)

    active = torch.arange(T).view(T, 1) < torch.tensor(n_steps).view(1, C)
    losses = []
    was = model.training
    model.train()
    try:
        if prefix:
            # the clients still training at step t are the first ``counts[t]``; their batches are
            # gathered a step at a time from the clients' rows laid end to end, with one zero row
            # (label 0) for the padding of a short last batch, as a padded layout would hold
            sizes_ = torch.tensor([len(r.y) for r in runs])
            if layout is None:  # the dense grid (equal clients, or the per-batch schedule): its active part
                layout = (None, n_steps, B) + _active_part(idx, mask, active, sizes_)
            counts, offsets, placed, mask_c = layout[3:]
            x_cat = torch.cat([r.x for r in runs] + [torch.zeros((1,) + tuple(runs[0].x.shape[1:]), dtype=runs[0].x.dtype)])
            y_cat = torch.cat([r.y for r in runs] + [torch.zeros(1, dtype=runs[0].y.dtype)])
            per_slot = mask_c.view(-1, B)  # one row per (step, client still training)
            dens = per_slot.sum(1).clamp_min(1.0)
            ups = per_slot / dens.unsqueeze(1)  # each sample's weight in its client's mean loss
            padded = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum((per_slot == 0).any(1).long(), 0)])
            first = torch.tensor(offsets) // B
            full = (padded[first + torch.tensor(counts)] == padded[first]).tolist()
            views = {C: params}
            shape = tuple(x_cat.shape[1:])
            for t in range(T):
                n, o, r = counts[t], offsets[t], offsets[t] // B
                if n not in views:
                    views[n] = unflatten(flat[:n])
                sel = placed[o : o + n * B]
                xb = x_cat.index_select(0, sel).view((n, B) + shape)
                yb = y_cat.index_select(0, sel).view(n, B)
                g, loss, _ = step(views[n], xb, yb, per_slot[r : r + n], dens[r : r + n], full[t], ups[r : r + n])
                opt.step(views[n], g, None, n=n)
                if train_loss:
                    losses.append(loss)
        else:
            # all clients' data in one padded tensor, so a step's batch is one gather; steps' batches
            # gathered a block at a time (about one epoch of the largest client: no more memory than
            # x_all); whether each step has padding
            denoms = mask.sum(2).clamp_min(1.0)
            x_all = _padded([r.x for r in runs])
            y_all = _padded([r.y for r in runs])
            block = max(1, x_all.shape[1] // max(B, 1))
            full = mask.flatten(1).all(1).tolist()
            rows = torch.arange(C).view(C, 1)
            for t in range(T):
                if t % block == 0:
                    x_steps = x_all[rows, idx[t : t + block]]
                    y_steps = y_all[rows, idx[t : t + block]]
                yb = y_steps[t % block]
                g, loss, logits = step(params, x_steps[t % block], yb, mask[t], denoms[t], full[t])
                if observe is not None:
                    observe(logits, yb, mask[t] * active[t].to(mask.dtype).unsqueeze(1))
                opt.step(params, g, active[t])
                losses.append(loss)
    finally:
        model.train(was)
    return _finish(flat, losses if train_loss else None, n_steps, back, active, prefix)


def _finish(flat: torch.Tensor, losses: list[torch.Tensor] | None, n_steps: list[int], back: list[int] | None, active: torch.Tensor, prefix: bool) -> tuple[torch.Tensor, list[dict]]:
    """``train_clients_stacked``'s result from its trained rows and every step's losses: each client's
    mean loss over its own steps (without ``losses``, its steps only), rows and metrics back in the
    caller's order."""
    C = len(n_steps)
    metrics = [{"steps": n_steps[c]} for c in range(C)]
    if losses is not None:
        totals = torch.zeros(C, dtype=torch.float64)
        zero = torch.zeros((), dtype=torch.float64)
        for t, loss in enumerate(losses):
            if prefix:  # x + 0 is x: the clients past the prefix would add nothing
                totals[: loss.shape[0]] += loss.double()
            else:
                totals += torch.where(active[t], loss.double(), zero)
        metrics = [{"train_loss": float(totals[c]) / max(n_steps[c], 1), **m} for c, m in enumerate(metrics)]
    if back is not None:
        flat, metrics = flat[back], [metrics[c] for c in back]
    return flat, metrics


def train_clients(
    model: nn.Module,
    runs: list[ClientRun],
    opts: dict,
    epochs: int,
    batch_size: int,
    max_steps: int = 0,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    observe: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    epochs_per_client: list[int] | None = None,
) -> tuple[list[dict[str, torch.Tensor]], list[dict]]:
    """Train every client in ``runs`` from its ``start`` tensors; return (final tensors, metrics) per client.
    Arguments as :func:`train_clients_stacked`; each client's tensors are its own copies, in
    the dtypes it started from."""
    flat, metrics = train_clients_stacked(model, runs, opts, epochs, batch_size, max_steps, loss_fn, observe, epochs_per_client)
    names = list(runs[0].start)
    shapes = [runs[0].start[k].shape for k in names]
    parts = flat.split([int(torch.Size(sh).numel()) for sh in shapes], dim=1)
    finals = [{k: part[c].view(sh).clone().to(runs[c].start[k].dtype) for k, sh, part in zip(names, shapes, parts)} for c in range(len(runs))]
    return finals, metrics

