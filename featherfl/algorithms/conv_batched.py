"""A batched local step for small convolutional nets without vmap or the autograd engine.

``vectorized.train_clients_stacked`` runs a cohort's local step as one ``vmap`` of
``functional_call`` + ``grad``. For a convolutional net on the CPU that costs more than the
arithmetic: vmap turns each convolution into a grouped convolution over the clients, every
client's batch is padded to the cohort's batch size (a client's short last batch, a client that
has finished), and the autograd engine walks the graph on every step.

Here a model that is an ``nn.Sequential`` of ``Conv2d``, ``ReLU``, ``MaxPool2d``, ``Flatten`` and
``Linear`` (every tensor trained, no loss function of the caller's) is stepped by hand:

* only the real samples of a step are computed: the padded slots are dropped before the
  forward pass (a step costs its real samples, not clients x batch size);
* each sample is computed with its own client's tensors (gathered by the sample's client), and
  a weight's gradient is the per-sample gradients summed into the client's row (``index_add_``);
* the first convolution (its input is data: no input gradient) is im2col, as one strided copy,
  and a batched matrix product over the samples; a later convolution is one grouped convolution
  with a group per sample, forward and backward through ATen's convolution kernels;
* max pooling calls ATen's kernels on a channels-last copy (ties go where
  ``torch.nn.functional.max_pool2d`` sends them); a ReLU right before it runs after it, on the
  smaller tensor (the same values and gradients); a linear layer sets the step's samples out in
  its clients x batch layout and is one batched product per client, so its weight gradient is
  each client's sum as it comes (no per-sample gradients);
* the loss is the per-sample cross-entropy over the client's real samples, as
  ``train_clients_stacked`` defines it, and its gradient is ``softmax - one_hot`` scaled by the
  client's count of samples.

Each client's gradient is the sequential loop's up to float rounding (sums in another order).
The first step of each model and input shape also recomputes a few clients' gradients with
autograd through the model (:func:`stepper`); a shape where they do not agree within float
tolerance keeps the vmap step.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

_aten = torch.ops.aten

#: (layer plan, sample shape and dtype, parameter shapes and dtypes) -> whether the lowering agreed with autograd
_AGREES: dict[tuple, bool] = {}


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def plan(model: nn.Module, trained: list[str]) -> tuple | None:
    """The layers of an ``nn.Sequential`` of ``Conv2d`` (no groups, zero padding), ``ReLU``,
    ``MaxPool2d``, ``Flatten`` (default dims) and ``Linear``, with at least one ``Conv2d`` and every
    tensor trained, as steps for :func:`forward_backward`; None for any other model (it keeps vmap)."""
    if type(model) is not nn.Sequential:
        return None
    steps = []
    used = 0
    for name, m in model.named_children():
        if type(m) is nn.Conv2d:
            if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                return None
            w, b = f"{name}.weight", (f"{name}.bias" if m.bias is not None else None)
            steps.append(("conv", w, b, _pair(m.kernel_size), _pair(m.dilation), _pair(m.padding), _pair(m.stride)))
        elif type(m) is nn.Linear:
            w, b = f"{name}.weight", (f"{name}.bias" if m.bias is not None else None)
            steps.append(("linear", w, b))
        elif type(m) is nn.ReLU and not m.inplace:
            steps.append(("relu",))
        elif type(m) is nn.MaxPool2d and not m.return_indices:
            k = _pair(m.kernel_size)
            s = k if m.stride is None else _pair(m.stride)
            steps.append(("maxpool", k, s, _pair(m.padding), _pair(m.dilation), bool(m.ceil_mode)))
        elif type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim == -1:
            steps.append(("flatten",))
        else:
            return None
        if steps[-1][0] in ("conv", "linear"):
            names = [n for n in steps[-1][1:3] if n is not None]
            if any(n not in trained for n in names):
                return None
            used += len(names)
    if used != len(trained) or not any(s[0] == "conv" for s in steps):
        return None
    # ReLU then max pooling is max pooling then ReLU, value for value (ReLU is monotone), and so is
    # the gradient: where a window's maximum is positive both send it to the window's first
    # maximum; where it is not, ReLU's gradient is 0 either way. Pooling first, ReLU and its
    # backward run on the pooled, smaller tensor
    for i in range(len(steps) - 1):
        if steps[i][0] == "relu" and steps[i + 1][0] == "maxpool":
            steps[i], steps[i + 1] = steps[i + 1], steps[i]
    return tuple(steps)


def _cols(x: torch.Tensor, k, d, pad, s) -> tuple[torch.Tensor, int, int]:
    """im2col of ``x`` (samples x channels x H x W, contiguous): samples x (channels k k) x positions,
    as one strided copy (``F.unfold``'s layout, without its per-element loop)."""
    if pad != (0, 0):
        x = F.pad(x, (pad[1], pad[1], pad[0], pad[0]))
    n, c, h, w = x.shape
    ho = (h - d[0] * (k[0] - 1) - 1) // s[0] + 1
    wo = (w - d[1] * (k[1] - 1) - 1) // s[1] + 1
    st = x.stride()
    view = x.as_strided((n, c, k[0], k[1], ho, wo), (st[0], st[1], d[0] * st[2], d[1] * st[3], s[0] * st[2], s[1] * st[3]))
    return view.reshape(n, c * k[0] * k[1], ho * wo), ho, wo


def _slots(client: torch.Tensor, clients: int) -> tuple[torch.Tensor, int, torch.Tensor | None]:
    """Each sample's row in a block that holds the step's clients' samples in order, width rows a
    client (the ``j``-th sample of the ``g``-th client present at ``g * width + j``), that width
    (the most samples one client has), and the clients present in block order (None: all of
    them, in order)."""
    n = client.shape[0]
    present = torch.unique(client)
    group = torch.searchsorted(present, client)
    counts = torch.bincount(group, minlength=len(present))
    width = max(int(counts.max()), 1) if n else 1
    order = torch.argsort(group, stable=True)
    starts = counts.cumsum(0) - counts
    rank = torch.empty_like(client)
    rank[order] = torch.arange(n) - starts[group[order]]
    return group * width + rank, width, (None if len(present) == clients else present)


def forward_backward(plan_: tuple, p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, client: torch.Tensor, scale: torch.Tensor, clients: int, slots: tuple[torch.Tensor, int, torch.Tensor | None] | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """For ``x`` (samples x ...) with labels ``y``, each sample of client ``client[i]`` weighted by
    ``scale[i]``: the gradient of sum_i scale_i * cross_entropy_i with respect to every client's
    stacked tensors in ``p`` (clients x ...), the per-sample losses and the logits.

    The first layer's convolution (its input is data: no input gradient) is im2col and a batched
    product; a later one is a grouped convolution with one group per sample (its weights are the
    sample's client's), forward and backward through ATen's convolution kernels. A linear layer
    sets the samples out per client present (``slots``: each sample's row in a block of width rows
    per client present, that width and those clients, as :func:`_slots` gives; worked out here
    when None) and is one batched product per client, whose weight gradient is the client's sum
    over its samples as it comes."""
    saved = []
    if slots is None and any(st[0] == "linear" for st in plan_):
        slots = _slots(client, clients)
    h = x.contiguous()
    n = h.shape[0]
    for i, st in enumerate(plan_):
        kind = st[0]
        if kind == "conv":
            _, wn, bn, k, d, pad, s = st
            w = p[wn]
            cout = w.shape[1]
            wg = w[client]  # samples x cout x cin x k x k
            bg = p[bn][client] if bn is not None else None
            if i == 0:
                cols, ho, wo = _cols(h, k, d, pad, s)
                wm = wg.view(n, cout, -1)
                out = torch.bmm(wm, cols) if bg is None else torch.baddbmm(bg.unsqueeze(2), wm, cols)
                saved.append(cols)
                h = out.view(n, cout, ho, wo)
            else:
                flatw = wg.view((n * cout,) + tuple(w.shape[2:]))
                hin = h.reshape(1, -1, h.shape[2], h.shape[3])
                out = F.conv2d(hin, flatw, None if bg is None else bg.reshape(-1), s, pad, d, n)
                saved.append((hin, flatw))
                h = out.view(n, cout, out.shape[2], out.shape[3])
        elif kind == "linear":
            _, wn, bn = st
            rows, width, present = slots
            w, bias = p[wn], (p[bn] if bn is not None else None)
            if present is not None:  # only the clients with samples in this step
                w, bias = w.index_select(0, present), (bias.index_select(0, present) if bias is not None else None)
            groups = w.shape[0]
            # the samples set out per client (zero rows where a client has fewer): one product per
            # client, not a gather of every sample's weights and a product and sum per sample
            hp = h.new_zeros(groups * width, h.shape[1]).index_copy_(0, rows, h).view(groups, width, -1)
            out = torch.bmm(hp, w.transpose(1, 2)) if bias is None else torch.baddbmm(bias.unsqueeze(1), hp, w.transpose(1, 2))
            saved.append((hp, w, present))
            h = out.view(groups * width, -1).index_select(0, rows)
        elif kind == "relu":
            h = torch.relu(h)
            saved.append(h)
        elif kind == "maxpool":
            _, k, s, pad, d, ceil = st
            hc = h.contiguous(memory_format=torch.channels_last)  # ATen's pooling is vectorised over channels there
            out, ind = _aten.max_pool2d_with_indices(hc, k, s, pad, d, ceil)
            saved.append((hc, ind))
            h = out.contiguous()
        else:  # flatten
            saved.append(h.shape)
            h = h.reshape(n, -1)
    logits = h
    logp = torch.log_softmax(logits, 1)
    per = -logp.gather(1, y.view(-1, 1)).squeeze(1)
    g = logp.exp()
    g[torch.arange(n), y] -= 1.0
    g = g * scale.unsqueeze(1)

    grads: dict[str, torch.Tensor] = {}
    for i in range(len(plan_) - 1, -1, -1):
        st = plan_[i]
        kind = st[0]
        sv = saved[i]
        if kind == "conv":
            _, wn, bn, k, d, pad, s = st
            cout = p[wn].shape[1]
            if i == 0:
                # samples x positions x cout: a view of the channels-last gradient the pooling gives
                # back (the product reads it transposed; no copy to samples x cout x positions)
                gt = g.permute(0, 2, 3, 1).reshape(n, -1, cout)
                gw = torch.bmm(gt.transpose(1, 2), sv.transpose(1, 2))
                go = gt.transpose(1, 2)
            else:
                go = g.reshape(n, cout, -1)  # samples x cout x positions
                hin, flatw = sv
                gi, gw, _ = _aten.convolution_backward(go.reshape(1, n * cout, g.shape[2], g.shape[3]), hin, flatw, None, list(s), list(pad), list(d), False, [0, 0], n, [True, True, False])
                g = gi.view(n, -1, hin.shape[2], hin.shape[3])
            grads[wn] = torch.zeros((clients,) + tuple(p[wn].shape[1:])).index_add_(0, client, gw.view((n,) + tuple(p[wn].shape[1:])))
            if bn is not None:
                grads[bn] = torch.zeros(clients, cout).index_add_(0, client, go.sum(2))
        elif kind == "linear":
            _, wn, bn = st
            hp, w, present = sv
            rows, width = slots[:2]
            groups = w.shape[0]
            gp = g.new_zeros(groups * width, g.shape[1]).index_copy_(0, rows, g).view(groups, width, -1)
            gw = torch.bmm(gp.transpose(1, 2), hp)  # each client's sum over its samples (zero rows add nothing)
            grads[wn] = gw if present is None else gw.new_zeros(p[wn].shape).index_copy_(0, present, gw)
            if bn is not None:
                gb = gp.sum(1)
                grads[bn] = gb if present is None else gb.new_zeros(p[bn].shape).index_copy_(0, present, gb)
            if i > 0:
                g = torch.bmm(gp, w).view(groups * width, -1).index_select(0, rows)
        elif kind == "relu":
            g = _aten.threshold_backward(g, sv, 0)
        elif kind == "maxpool":
            _, k, s, pad, d, ceil = st
            hc, ind = sv
            # channels-last as it comes: the layers below read it through views (no copy back)
            g = _aten.max_pool2d_with_indices_backward(g.contiguous(memory_format=torch.channels_last), hc, k, s, pad, d, ceil, ind)
        else:
            g = g.view(sv)
    return grads, per, logits


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = float(b.abs().max()) if b.numel() else 0.0
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-3, atol=1e-5 * max(scale, 1e-3)))


#: clients of a step whose gradients the first-step check recomputes with autograd
CHECK_CLIENTS = 4


def _autograd_agrees(model: nn.Module, p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, client: torch.Tensor, denom: torch.Tensor, grads: dict[str, torch.Tensor], loss: torch.Tensor) -> bool:
    """Whether ``grads`` and ``loss`` (the lowering's, clients x ...) are, for the first
    :data:`CHECK_CLIENTS` clients with samples in this step, what autograd gives through the model
    itself: the client's mean cross-entropy over its real samples, as the sequential loop computes it."""
    from torch.func import functional_call

    present = torch.unique_consecutive(client)[:CHECK_CLIENTS].tolist()
    with torch.enable_grad():
        for c in present:
            rows = client == c
            leaves = {k: v[c].detach().clone().requires_grad_(True) for k, v in p.items()}
            out = functional_call(model, leaves, (x[rows],))
            ref_loss = F.cross_entropy(out, y[rows], reduction="sum") / denom[c]
            ref = torch.autograd.grad(ref_loss, list(leaves.values()))
            if not _close(loss[c : c + 1], ref_loss.detach().view(1)) or not all(_close(grads[k][c], r) for k, r in zip(leaves, ref)):
                return False
    return True


def stepper(plan_: tuple, reference: Callable, model: nn.Module) -> Callable:
    """A drop-in for ``train_clients_stacked``'s step (``reference``, the vmap one): the lowering of
    :func:`forward_backward` on the step's real samples. The first step of each input shape also
    computes a few clients' gradients with autograd through ``model`` and compares (remembered in
    ``_AGREES``); a shape where they differ beyond float tolerance, or where the lowering raises,
    runs ``reference`` from then on."""

    def step(p, xb, yb, mb, denom, full, *more):
        C, B = xb.shape[:2]
        key = (plan_, tuple(xb.shape[2:]), xb.dtype, tuple((k, tuple(v.shape[1:]), v.dtype) for k, v in p.items()))
        known = _AGREES.get(key)
        if known is False:
            return reference(p, xb, yb, mb, denom, full, *more)
        flat_mask = mb.reshape(-1)
        if full:
            sel = None
            x, y = xb.flatten(0, 1), yb.reshape(-1)
            client = torch.arange(C).repeat_interleave(B)
            slots = (torch.arange(C * B), B, None)
        else:
            sel = flat_mask.nonzero().squeeze(1)
            x, y = xb.flatten(0, 1)[sel], yb.reshape(-1)[sel]
            client = sel // B
            present = torch.unique_consecutive(client)  # sel ascends, so clients come in order
            if len(present) == C:
                slots = (sel, B, None)  # a sample's slot in the step's clients x batch layout
            else:  # the same layout over only the clients with samples in this step
                slots = (torch.searchsorted(present, client) * B + sel % B, B, present)
        scale = (1.0 / denom)[client]
        try:
            grads, per, logits = forward_backward(plan_, p, x, y, client, scale, C, slots)
        except Exception:  # a shape or dtype the lowering cannot take: the vmap step, from now on
            if known:
                raise
            _AGREES[key] = False
            return reference(p, xb, yb, mb, denom, full, *more)
        loss = torch.zeros(C).index_add_(0, client, per) / denom
        if sel is None:
            out_logits = logits.view(C, B, -1)
        else:
            out_logits = torch.zeros(C * B, logits.shape[1]).index_copy_(0, sel, logits).view(C, B, -1)
        grads = {k: grads[k] for k in p}
        if known is None:
            ok = _autograd_agrees(model, p, x, y, client, denom, grads, loss)
            _AGREES[key] = ok
            if not ok:
                return reference(p, xb, yb, mb, denom, full, *more)
        return grads, loss, out_logits.detach()

    return step
