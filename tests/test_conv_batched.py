"""The hand-stepped batched path for small conv nets (featherfl.algorithms.conv_batched) gives each
client what the sequential loop gives it, is used only for the layer patterns it supports, and
gives way to the vmap step where it disagrees with autograd or fails."""

import copy

import pytest
import torch
from torch import nn

from featherfl.algorithms import conv_batched as CB
from featherfl.algorithms import vectorized as V
from featherfl.algorithms.training import make_optimizer, train_epochs
from featherfl.models import build_model


def _cnn(seed=0, pool=None, conv2=None):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(2),
        conv2 or nn.Conv2d(4, 6, 3), nn.ReLU(), pool or nn.MaxPool2d(2),
        nn.Flatten(), nn.LazyLinear(10),
    )


def _built(model, shape=(1, 16, 16)):
    model(torch.zeros((1,) + shape))  # materialise the lazy layer
    return model


def _clients(sizes, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    # images with flat zero regions, as MNIST has: equal values inside a pooling window (ties)
    out = []
    for n in sizes:
        x = torch.randn((n,) + shape, generator=g)
        x[:, :, :6] = 0.0
        out.append((x, torch.randint(0, 10, (n,), generator=g)))
    return out


def _sequential(model, data, opts, epochs, bs):
    out = []
    for i, (x, y) in enumerate(data):
        m = copy.deepcopy(model)
        train_epochs(m, x, y, make_optimizer(m.parameters(), opts), epochs, bs, torch.Generator().manual_seed(100 + i), 0)
        out.append({k: v.detach() for k, v in m.named_parameters()})
    return out


def _vectorised(model, data, opts, epochs, bs, **kw):
    runs = [V.ClientRun({k: v.detach().clone() for k, v in model.named_parameters()}, x, y, torch.Generator().manual_seed(100 + i)) for i, (x, y) in enumerate(data)]
    return V.train_clients(model, runs, opts, epochs, bs, **kw)


SGD = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}
ADAM = {"optimizer": "adam", "lr": 1e-2, "momentum": 0.0, "weight_decay": 1e-4}


def _spy(monkeypatch):
    calls = []
    real = CB.forward_backward
    monkeypatch.setattr(CB, "forward_backward", lambda *a: calls.append(a[2].shape[0]) or real(*a))
    return calls


def test_plan_takes_only_the_patterns_it_supports():
    model = _built(_cnn())
    names = [k for k, _ in model.named_parameters()]
    steps = CB.plan(model, names)
    assert steps is not None and [s[0] for s in steps] == ["conv", "maxpool", "relu", "conv", "maxpool", "relu", "flatten", "linear"]  # ReLU after the pooling: the same values, less work
    assert CB.plan(model, names[2:]) is None  # a frozen layer
    mlp = build_model("mlp", (1, 8, 8), 10, norm="none", activation="relu", width=0)
    assert CB.plan(mlp, [k for k, _ in mlp.named_parameters()]) is None  # no convolution: the MLP path as before
    lenet = build_model("lenet", (1, 8, 8), 10, norm="none", activation="relu", width=0)
    assert CB.plan(lenet, [k for k, _ in lenet.named_parameters()]) is None  # not an nn.Sequential
    for odd in (nn.Conv2d(4, 6, 3, groups=2), nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"), nn.Conv2d(4, 6, 3, padding="same")):
        m = _built(_cnn(conv2=odd))
        assert CB.plan(m, [k for k, _ in m.named_parameters()]) is None
    m = _built(_cnn(pool=nn.AvgPool2d(2)))
    assert CB.plan(m, [k for k, _ in m.named_parameters()]) is None


def test_a_model_outside_the_patterns_trains_through_vmap_as_before(monkeypatch):
    """Average pooling is not a pattern of the lowering: the vmap step trains it, still matching
    the sequential loop."""
    model = _built(_cnn(6, pool=nn.AvgPool2d(2)))
    data = _clients([13, 30, 4], (1, 16, 16), seed=11)
    calls = _spy(monkeypatch)
    seq = _sequential(model, data, SGD, 2, 8)
    vec, _ = _vectorised(model, data, SGD, 2, 8)
    assert not calls
    for s, v in zip(seq, vec):
        assert all(torch.allclose(s[k], v[k], atol=1e-5) for k in s)


@pytest.mark.parametrize("opts", [SGD, ADAM], ids=["sgd", "adam"])
def test_matches_sequential_with_unequal_client_sizes(opts, monkeypatch):
    """Different sizes: different step counts, short last batches, finished clients; all honoured."""
    model = _built(_cnn(1))
    data = _clients([37, 64, 5, 90, 1], (1, 16, 16))
    calls = _spy(monkeypatch)
    CB._AGREES.clear()
    seq = _sequential(model, data, opts, 2, 16)
    vec, metrics = _vectorised(model, data, opts, 2, 16)
    assert [m["steps"] for m in metrics] == [6, 8, 2, 12, 2]
    assert calls and CB._AGREES and all(CB._AGREES.values())  # the lowering ran and agreed
    # only real samples are computed: steps x 5 clients x 16 slots would be 192 per epoch pass
    assert max(calls) <= 16 * 5 and min(calls) < 16 * 5
    assert sum(calls) == 2 * (37 + 64 + 5 + 90 + 1)
    start = {k: v.detach() for k, v in model.named_parameters()}
    for s, v in zip(seq, vec):
        moved = max(float((s[k] - start[k]).abs().max()) for k in s)
        err = max(float((s[k] - v[k]).abs().max()) for k in s)
        assert moved > 1e-3
        assert err < (1e-5 if opts is SGD else 1e-2 * moved), (err, moved)


def test_padding_stride_dilation_and_pool_options_match_sequential(monkeypatch):
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, stride=2), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.Conv2d(4, 5, 3, padding=2, dilation=2, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(5 * 2 * 2, 10, bias=False),
    )
    shape = (2, 15, 15)
    model(torch.zeros((1,) + shape))
    data = _clients([9, 30, 17], shape, seed=5)
    calls = _spy(monkeypatch)
    CB._AGREES.clear()
    seq = _sequential(model, data, SGD, 1, 8)
    vec, _ = _vectorised(model, data, SGD, 1, 8)
    assert calls and all(CB._AGREES.values())
    for s, v in zip(seq, vec):
        assert all(torch.allclose(s[k], v[k], atol=1e-5) for k in s)


def test_a_lowering_that_disagrees_with_autograd_is_not_used(monkeypatch):
    model = _built(_cnn(2))
    data = _clients([20, 33, 7], (1, 16, 16), seed=6)
    with monkeypatch.context() as m:
        m.setattr(CB, "plan", lambda *a: None)
        via_vmap, _ = _vectorised(model, data, SGD, 1, 8)
    CB._AGREES.clear()
    real = CB.forward_backward

    def off(*a):
        grads, per, logits = real(*a)
        return {k: g * (1 + 1e-2) for k, g in grads.items()}, per, logits

    monkeypatch.setattr(CB, "forward_backward", off)
    got, _ = _vectorised(model, data, SGD, 1, 8)
    assert CB._AGREES and not any(CB._AGREES.values())
    for a, b in zip(got, via_vmap):
        # the vmap step; over the clients still training only (a conv net's steps skip finished
        # clients), so a grouped convolution of fewer groups: equal up to float rounding
        assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    CB._AGREES.clear()


def test_a_lowering_that_raises_gives_way_to_vmap(monkeypatch):
    model = _built(_cnn(3))
    data = _clients([9, 21], (1, 16, 16), seed=9)
    with monkeypatch.context() as m:
        m.setattr(CB, "plan", lambda *a: None)
        via_vmap, _ = _vectorised(model, data, ADAM, 1, 8)
    CB._AGREES.clear()

    def boom(*a):
        raise RuntimeError("not this shape")

    monkeypatch.setattr(CB, "forward_backward", boom)
    got, _ = _vectorised(model, data, ADAM, 1, 8)
    assert CB._AGREES and not any(CB._AGREES.values())
    for a, b in zip(got, via_vmap):  # the vmap step (over the clients still training: float rounding)
        assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    CB._AGREES.clear()


def test_a_loss_function_of_the_callers_keeps_vmap(monkeypatch):
    model = _built(_cnn(4))
    data = _clients([12, 20], (1, 16, 16), seed=7)
    calls = _spy(monkeypatch)
    loss = lambda logits, y: torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
    _vectorised(model, data, SGD, 1, 8, loss_fn=loss)
    assert not calls


def test_observe_sees_the_vmap_steps_outputs(monkeypatch):
    """``observe`` gets clients x batch outputs with the padding where vmap puts it."""
    model = _built(_cnn(5))
    data = _clients([12, 20, 3], (1, 16, 16), seed=8)

    def seen():
        rows = []
        _vectorised(model, data, SGD, 1, 8, observe=lambda logits, y, mask: rows.append((logits * mask.unsqueeze(2), y * mask.long(), mask)))
        return rows

    CB._AGREES.clear()
    lowered = seen()
    with monkeypatch.context() as m:
        m.setattr(CB, "plan", lambda *a: None)
        via_vmap = seen()
    assert len(lowered) == len(via_vmap) == 3
    for (a, ya, ma), (b, yb, mb) in zip(lowered, via_vmap):
        assert torch.equal(ma, mb) and torch.equal(ya, yb) and torch.allclose(a, b, atol=1e-5)


def test_forward_backward_takes_samples_in_any_client_order():
    """The linear layers set a step's samples out per client themselves when the caller gives no
    slots; samples of clients in any order (and a hidden linear layer) give each client the
    gradient autograd gives it."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 5 * 5, 12), nn.ReLU(), nn.Linear(12, 10))
    steps = CB.plan(model, [k for k, _ in model.named_parameters()])
    clients = 4
    g = torch.Generator().manual_seed(9)
    p = {k: v.detach().unsqueeze(0) + 0.1 * torch.randn((clients,) + v.shape, generator=g) for k, v in model.named_parameters()}
    client = torch.tensor([2, 0, 3, 2, 2, 0, 3, 2, 0])  # client 1 has none
    x, y = torch.randn(len(client), 1, 12, 12, generator=g), torch.randint(0, 10, (len(client),), generator=g)
    denom = torch.bincount(client, minlength=clients).clamp(min=1).float()
    grads, per, _ = CB.forward_backward(steps, p, x, y, client, 1.0 / denom[client], clients)
    assert float(grads["4.weight"][1].abs().max()) == 0.0 and float(grads["0.weight"][1].abs().max()) == 0.0
    loss = torch.zeros(clients).index_add_(0, client, per) / denom
    assert CB._autograd_agrees(model, p, x[client.argsort(stable=True)], y[client.argsort(stable=True)], client.sort(stable=True).values, denom, grads, loss)
    # one client's samples alone (a long client's last steps)
    one = {k: v[2:3].clone() for k, v in p.items()}
    mine = client == 2
    g1, per1, _ = CB.forward_backward(steps, one, x[mine], y[mine], torch.zeros(int(mine.sum()), dtype=torch.long), torch.full((int(mine.sum()),), 1.0 / float(denom[2])), 1)
    assert CB._autograd_agrees(model, one, x[mine], y[mine], torch.zeros(int(mine.sum()), dtype=torch.long), denom[2:3], g1, per1.sum().view(1) / denom[2])
    assert all(torch.allclose(g1[k][0], grads[k][2], atol=1e-6) for k in grads)
    # a gradient off by a little in one client is caught: the check can fail
    grads["6.weight"][3] += 1e-2
    assert not CB._autograd_agrees(model, p, x[client.argsort(stable=True)], y[client.argsort(stable=True)], client.sort(stable=True).values, denom, grads, loss)
