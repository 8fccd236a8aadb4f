"""Vectorised client training gives each client what the sequential loop gives it."""

import copy

import pytest
import torch
from torch import nn

from featherfl.algorithms import vectorized as V
from featherfl.algorithms.training import make_optimizer, train_epochs
from featherfl.models import build_model


def _clients(sizes, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn((n,) + shape, generator=g), torch.randint(0, 10, (n,), generator=g)) for n in sizes]


def _sequential(model, data, opts, epochs, bs, max_steps):
    out = []
    for i, (x, y) in enumerate(data):
        m = copy.deepcopy(model)
        train_epochs(m, x, y, make_optimizer(m.parameters(), opts), epochs, bs, torch.Generator().manual_seed(100 + i), max_steps)
        out.append({k: v.detach() for k, v in m.named_parameters()})
    return out


def _vectorised(model, data, opts, epochs, bs, max_steps):
    runs = [V.ClientRun({k: v.detach().clone() for k, v in model.named_parameters()}, x, y, torch.Generator().manual_seed(100 + i)) for i, (x, y) in enumerate(data)]
    return V.train_clients(model, runs, opts, epochs, bs, max_steps)


SGD = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3}
ADAM = {"optimizer": "adam", "lr": 1e-2, "momentum": 0.0, "weight_decay": 1e-4}


@pytest.mark.parametrize("name", ["mlp", "lenet"])
@pytest.mark.parametrize("opts", [SGD, ADAM], ids=["sgd", "adam"])
def test_matches_sequential_with_unequal_client_sizes(name, opts):
    """Different sizes mean different step counts and short last batches: each must be honoured."""
    torch.manual_seed(0)
    model = build_model(name, (1, 8, 8), 10, norm="none", activation="relu", width=0)
    data = _clients([37, 64, 5, 90], (1, 8, 8))
    seq = _sequential(model, data, opts, 2, 16, 0)
    vec, metrics = _vectorised(model, data, opts, 2, 16, 0)
    assert [m["steps"] for m in metrics] == [6, 8, 2, 12]
    start = {k: v.detach() for k, v in model.named_parameters()}
    for s, v in zip(seq, vec):
        moved = max(float((s[k] - start[k]).abs().max()) for k in s)
        err = max(float((s[k] - v[k]).abs().max()) for k in s)
        assert moved > 1e-3  # training happened
        # SGD agrees to float rounding; Adam divides by sqrt(v), which magnifies rounding
        # where a gradient is ~0, so its bound is relative to how far training moved
        assert err < (1e-5 if opts is SGD else 1e-2 * moved), (err, moved)


def test_max_steps_and_full_batch():
    torch.manual_seed(1)
    model = build_model("mlp", (1, 8, 8), 10, norm="none", activation="relu", width=0)
    data = _clients([30, 50], (1, 8, 8), seed=3)
    for bs, cap in ((0, 0), (8, 3)):
        seq = _sequential(model, data, SGD, 3, bs, cap)
        vec, metrics = _vectorised(model, data, SGD, 3, bs, cap)
        for s, v in zip(seq, vec):
            assert all(torch.allclose(s[k], v[k], atol=5e-5) for k in s)
        assert all(m["steps"] == (cap or 3) for m in metrics)


def test_frozen_tensors_stay_shared_and_fixed():
    """Only the tensors in ``start`` train (FedPEFT's subsets): the rest of the model is shared and untouched."""
    torch.manual_seed(2)
    model = build_model("mlp", (1, 8, 8), 10, norm="none", activation="relu", width=0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    heads = [k for k in before if k.startswith(list(before)[-1].split(".")[0])]
    data = _clients([20, 40], (1, 8, 8), seed=4)
    runs = [V.ClientRun({k: before[k].clone() for k in heads}, x, y, torch.Generator().manual_seed(i)) for i, (x, y) in enumerate(data)]
    finals, _ = V.train_clients(model, runs, SGD, 1, 8)
    assert set(finals[0]) == set(heads)
    assert all(torch.equal(before[k], v) for k, v in model.named_parameters())
    for i, (x, y) in enumerate(data):  # the head alone, trained sequentially on top of the frozen body
        m = copy.deepcopy(model)
        for k, p in m.named_parameters():
            p.requires_grad_(k in heads)
        train_epochs(m, x, y, make_optimizer(m.parameters(), SGD), 1, 8, torch.Generator().manual_seed(i))
        assert all(torch.allclose(dict(m.named_parameters())[k], finals[i][k], atol=5e-5) for k in heads)


class _Tied(nn.Module):
    """One weight used twice (tied), as text models tie embeddings to their output layer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.b.weight = self.a.weight
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        return self.out(torch.relu(self.b(torch.relu(self.a(x.flatten(1))))))


def test_tied_tensors_train_as_one():
    """The one tensor under two names gets the gradient of both uses, as in the sequential loop."""
    torch.manual_seed(5)
    model = _Tied()
    assert V._has_tied_tensors(model) and not V._has_tied_tensors(build_model("mlp", (1, 8, 8), 10, norm="none", activation="relu", width=0))
    data = _clients([24, 40], (1, 4, 4), seed=6)
    seq = _sequential(model, data, SGD, 2, 8, 0)
    vec, _ = _vectorised(model, data, SGD, 2, 8, 0)
    for s, v in zip(seq, vec):
        assert set(s) == set(v) and "b.weight" not in v
        assert all(torch.allclose(s[k], v[k], atol=1e-5) for k in s)


def _train_all(model, data, opts=SGD):
    finals, _ = _vectorised(model, data, opts, 2, 8, 0)
    return finals


def test_plain_mlp_forward_without_vmap_is_bit_for_bit_vmaps(monkeypatch):
    """A Sequential of Flatten / Linear / ReLU runs its batched forward as the operations vmap
    issues, without vmap: the trained tensors must be the very bits the vmap path gives."""
    torch.manual_seed(7)
    model = build_model("mlp", (1, 8, 8), 10, norm="none", activation="relu", width=0)
    names = [k for k, _ in model.named_parameters()]
    assert V._mlp_plan(model, names) is not None
    assert V._mlp_plan(model, names[:-2]) is None  # a frozen layer: vmap path
    assert V._mlp_plan(build_model("lenet", (1, 8, 8), 10, norm="none", activation="relu", width=0), names) is None
    data = _clients([37, 64, 5, 90], (1, 8, 8), seed=8)
    V._DIRECT_AGREES.clear()
    for opts in (SGD, ADAM):
        direct = _train_all(model, data, opts)
        assert V._DIRECT_AGREES and all(V._DIRECT_AGREES.values())  # it was checked, and used
        with monkeypatch.context() as m:
            m.setattr(V, "_mlp_plan", lambda *a: None)
            via_vmap = _train_all(model, data, opts)
        for a, b in zip(direct, via_vmap):
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_direct_forward_that_disagrees_with_vmap_is_not_used(monkeypatch):
    torch.manual_seed(9)
    model = build_model("mlp", (1, 8, 8), 10, norm="none", activation="relu", width=0)
    data = _clients([20, 30], (1, 8, 8), seed=10)
    with monkeypatch.context() as m:
        m.setattr(V, "_mlp_plan", lambda *a: None)
        via_vmap = _train_all(model, data)
    V._DIRECT_AGREES.clear()
    V._MANUAL_AGREES.clear()
    real = V._mlp_forward
    monkeypatch.setattr(V, "_mlp_forward", lambda plan, p, x: real(plan, p, x) * (1 + 1e-6))
    off = _train_all(model, data)
    assert V._DIRECT_AGREES and not any(V._DIRECT_AGREES.values())
    for a, b in zip(off, via_vmap):
        assert all(torch.equal(a[k], b[k]) for k in a)
    V._DIRECT_AGREES.clear()
    V._MANUAL_AGREES.clear()


@pytest.mark.parametrize("opts", [{"optimizer": "sgd", "lr": 0.1}, SGD, ADAM], ids=["sgd", "momentum", "adam"])
def test_plain_mlp_steps_without_autograd_and_only_for_clients_still_training(monkeypatch, opts):
    """A plain MLP's step runs its backward as autograd's kernels without the engine, and computes
    only the clients still training (the cohort sorted by steps, most first): every client's
    trained tensors and mean loss must be the very bits of the masked, autograd, vmap path, in the
    caller's order, for clients of very different sizes (a 3-row client pads its one batch)."""
    torch.manual_seed(11)
    model = build_model("mlp", (1, 8, 8), 10, norm="none", activation="relu", width=0)
    assert V.computes_only_active(model) and not V.computes_only_active(build_model("lenet", (1, 8, 8), 10, norm="none", activation="relu", width=0))
    data = _clients([37, 3, 90, 16, 64, 16], (1, 8, 8), seed=12)
    V._MANUAL_AGREES.clear()
    calls = []
    real_step = V._mlp_step
    monkeypatch.setattr(V, "_mlp_step", lambda *a: calls.append(a[2].shape[0]) or real_step(*a))
    fast, fast_metrics = _vectorised(model, data, opts, 2, 8, 0)
    assert V._MANUAL_AGREES and all(V._MANUAL_AGREES.values())
    assert max(calls) == 6 and min(calls) == 1  # the 90-row client's last steps compute it alone
    with monkeypatch.context() as m:
        m.setattr(V, "_mlp_plan", lambda *a: None)  # vmap, autograd, every client masked to the end
        slow, slow_metrics = _vectorised(model, data, opts, 2, 8, 0)
    assert fast_metrics == slow_metrics
    for a, b in zip(fast, slow):
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    V._MANUAL_AGREES.clear()


def test_a_manual_step_that_disagrees_with_autograd_is_not_used(monkeypatch):
    torch.manual_seed(13)
    model = build_model("mlp", (1, 8, 8), 10, norm="none", activation="relu", width=0)
    data = _clients([20, 30, 7], (1, 8, 8), seed=14)
    with monkeypatch.context() as m:
        m.setattr(V, "_manual_agrees", lambda *a: False)
        autograd = _train_all(model, data)
    V._MANUAL_AGREES.clear()
    real = V._mlp_step

    def off_by_a_little(*a):
        grads, loss, logits = real(*a)
        return {k: g * (1 + 1e-6) for k, g in grads.items()}, loss, logits

    monkeypatch.setattr(V, "_mlp_step", off_by_a_little)
    checked = _train_all(model, data)
    assert V._MANUAL_AGREES and not any(V._MANUAL_AGREES.values())
    for a, b in zip(checked, autograd):
        assert all(torch.equal(a[k], b[k]) for k in a)
    V._MANUAL_AGREES.clear()


def test_models_with_batchnorm_or_dropout_are_not_vectorised():
    assert V.supports(build_model("mlp", (1, 8, 8), 10, norm="none", activation="relu", width=0))
    assert not V.supports(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    assert not V.supports(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)))


def _run(tmp_path, vectorize, **extra):
    import json

    from featherfl.schema import build_config
    from featherfl.experiment import run_experiment

    over = {"engine.vectorize": vectorize, "engine.threads": 1, "rounds": 3, "clients": 6, "fedavg.max_steps": 5, **extra}
    out, s = run_experiment(build_config(None, list(over.items())), tmp_path / vectorize)
    return s, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_fedavg_run_vectorised_equals_sequential(tmp_path):
    """Same config, engine.vectorize auto vs off: same accuracy curve and the same bytes (Dirichlet: unequal clients)."""
    (sa, ra), (so, ro) = _run(tmp_path, "auto"), _run(tmp_path, "off")
    assert [r["bytes_up"] for r in ra] == [r["bytes_up"] for r in ro]
    for a, o in zip(ra, ro):
        assert abs(a["accuracy"] - o["accuracy"]) < 0.01 and abs(a["loss"] - o["loss"]) < 1e-3


def test_vectorised_path_is_used_and_a_failing_client_is_still_attributed(tmp_path, monkeypatch):
    from featherfl.algorithms import fedavg

    calls = []
    real = fedavg.WeightsClient.update_many
    monkeypatch.setattr(fedavg.WeightsClient, "update_many", lambda self, *a: calls.append(1) or real(self, *a))
    _run(tmp_path, "auto")
    assert calls, "engine.vectorize=auto did not batch FedAvg clients"

    def broken(self, rnd, downs, data, states):
        raise RuntimeError("batched step failed")

    monkeypatch.setattr(fedavg.WeightsClient, "update_many", broken)
    s, rows = _run(tmp_path / "fallback", "auto")
    assert all(r["clients_ok"] == 6 for r in rows)  # fell back to one by one, nobody lost


def test_client_groups_respect_the_memory_budget():
    # 4 bytes x clients x (5 x params + widest client x sample size)
    assert V.client_groups([10, 10, 10, 10], params=100, sample_numel=10, budget=10**9) == [[0, 1, 2, 3]]
    per = 4 * (5 * 100 + 10 * 10)  # one client of 10 samples
    assert V.client_groups([10, 10, 10, 10], params=100, sample_numel=10, budget=2 * per) == [[0, 1], [2, 3]]
    # padding counts: a wide client makes its group's every member as wide
    assert V.client_groups([10, 40, 10], params=100, sample_numel=10, budget=2 * per) == [[0], [1], [2]]
    assert V.client_groups([5], params=10**9, sample_numel=1, budget=1) == [[0]]  # alone over budget: its own group


def test_fedavg_round_split_by_the_memory_budget_equals_one_batched_call(tmp_path, monkeypatch):
    calls = []
    real = V.train_clients_stacked
    monkeypatch.setattr(V, "train_clients_stacked", lambda model, runs, *a, **k: calls.append(len(runs)) or real(model, runs, *a, **k))
    s_one, r_one = _run(tmp_path / "one", "auto")
    assert set(calls) == {6}
    calls.clear()
    monkeypatch.setattr(V, "MEMORY_BUDGET", 1)  # every client alone
    s_split, r_split = _run(tmp_path / "split", "auto")
    assert calls and set(calls) == {1}
    assert [r["bytes_up"] for r in r_one] == [r["bytes_up"] for r in r_split]
    for a, b in zip(r_one, r_split):
        assert abs(a["accuracy"] - b["accuracy"]) < 0.01 and abs(a["loss"] - b["loss"]) < 1e-3


def test_ragged_schedule_places_every_batch_as_the_per_batch_schedule_does():
    """The batch indices and mask built a client at a time equal those built a batch at a time
    (``_schedules`` then ``_step_indices``): sizes, batch sizes, epochs, ``max_steps`` and
    per-client epochs that cut, pad and skip in every way, each generator consumed the same."""
    import random

    rnd = random.Random(0)
    for trial in range(150):
        C = rnd.randint(1, 6)
        ns = [rnd.choice([1, 2, 3, 9, 10, 11, 37, 64]) for _ in range(C)]
        bs, ep, ms = rnd.choice([0, 1, 4, 10, 200]), rnd.randint(1, 3), rnd.choice([0, 0, 1, 3, 7])
        per = [rnd.randint(0, 3) for _ in range(C)] if trial % 3 == 0 else None

        def runs():
            return [V.ClientRun({}, torch.zeros(n, 2), torch.zeros(n, dtype=torch.long), torch.Generator().manual_seed(10 * trial + i)) for i, n in enumerate(ns)]

        plain = V._schedules(runs(), ep, bs, ms, per)
        steps = [len(s) for s in plain]
        got = V._ragged_schedule(runs(), ep, bs, ms, per)
        if max(steps) == 0:
            assert got is None
            continue
        B = max(b.shape[0] for s in plain for b in s)
        idx, mask = V._step_indices(plain, max(steps), C, B)
        assert got is not None and got[2] == steps and got[3] == B
        assert torch.equal(got[0], idx) and torch.equal(got[1], mask)


def test_active_schedule_holds_only_the_clients_still_training():
    """The layout a call that skips finished clients steps through: per step, the clients still
    training (sorted by steps, most first) and nothing else, so its size is the clients' own steps
    x B, never longest steps x clients x B (one client of 2,000 rows beside 249 of 10 would make a
    grid of 50 times the data); entry for entry the active part of the sorted dense grid."""
    import random

    rnd = random.Random(1)
    for trial in range(60):
        C = rnd.randint(1, 6)
        ns = [rnd.choice([1, 3, 9, 10, 11, 37, 64]) for _ in range(C)]
        bs, ep, ms = rnd.choice([0, 4, 10]), rnd.randint(1, 2), rnd.choice([0, 0, 3])

        def runs():
            return [V.ClientRun({}, torch.zeros(n, 2), torch.zeros(n, dtype=torch.long), torch.Generator().manual_seed(7 * trial + i)) for i, n in enumerate(ns)]

        order, steps, B, counts, offsets, placed, mask = V._active_schedule(runs(), ep, bs, ms, None)
        idx, dense_mask, dense_steps, dense_B = V._ragged_schedule(runs(), ep, bs, ms, None)
        assert B == dense_B and steps == [dense_steps[c] for c in order] and steps == sorted(steps, reverse=True)
        assert placed.shape[0] == sum(steps) * B and counts == [sum(1 for k in steps if k > t) for t in range(max(steps))]
        active = torch.arange(len(counts)).view(-1, 1) < torch.tensor(steps).view(1, -1)
        part = V._active_part(idx[:, order], dense_mask[:, order], active, torch.tensor([ns[c] for c in order]))
        assert part[0] == counts and part[1] == offsets and torch.equal(part[2], placed) and torch.equal(part[3], mask)


def test_cache_parts_cut_a_plain_mlps_clients_into_near_equal_calls():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))  # 4,810 parameters
    most = V.CACHE_BUDGET // (4 * 4810)
    for n in (1, 50, most, most + 1, 250, 500):
        parts = V.cache_parts(mlp, list(range(n)))
        assert [c for p in parts for c in p] == list(range(n))  # every client once, in order
        assert max(map(len, parts)) <= most and max(map(len, parts)) - min(map(len, parts)) <= 1
        assert len(parts) == -(-n // most)  # the fewest that fit
    assert V.cache_parts(mlp, []) == [[]]
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    assert V.cache_parts(conv, list(range(500))) == [list(range(500))]  # measured for the MLP only: other models keep one call


def test_fedavg_calls_cut_for_the_cache_give_the_rows_of_one_call(tmp_path, monkeypatch):
    calls = []
    real = V.train_clients_stacked
    monkeypatch.setattr(V, "train_clients_stacked", lambda model, runs, *a, **k: calls.append(len(runs)) or real(model, runs, *a, **k))
    over = {"model.name": "mlp", "engine.group_clients": 256}
    _, one = _run(tmp_path / "one", "auto", **over)
    assert set(calls) == {6}
    calls.clear()
    monkeypatch.setattr(V, "CACHE_BUDGET", 1)  # one client per call
    _, cut = _run(tmp_path / "cut", "auto", **over)
    assert calls and set(calls) == {1}
    drop = ("seconds", "wall_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in one] == [{k: v for k, v in r.items() if k not in drop} for r in cut]  # bit for bit


@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.9, 0.0), (0.9, 1e-3), (0.0, 1e-3)])
def test_stacked_sgd_updates_round_as_torch_optim_sgd(momentum, wd):
    # the same gradients, step after step: every client's weights as torch.optim.SGD leaves them, bit for bit
    g = torch.Generator().manual_seed(5)
    w = torch.randn(3, 7, 5, generator=g)
    grads = [torch.randn(3, 7, 5, generator=g) for _ in range(4)]
    stacked = {"w": w.clone()}
    opt = V._Optimizer(stacked, {"optimizer": "sgd", "lr": 0.07, "momentum": momentum, "weight_decay": wd})
    opt.owned.add("w")
    for gr in grads:
        stacked = opt.step(stacked, {"w": gr.clone()}, None, n=3)
    for c in range(3):
        p = nn.Parameter(w[c].clone())
        ref = torch.optim.SGD([p], lr=0.07, momentum=momentum, weight_decay=wd)
        for gr in grads:
            p.grad = gr[c].clone()
            ref.step()
        assert torch.equal(stacked["w"][c], p.detach())
