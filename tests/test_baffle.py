"""BAFFLE: the zeroth-order estimate, the scalar-only protocol, replay, and config checks."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featherfl import cli, wire
from featherfl.algorithms import zo
from featherfl.algorithms.baffle import Baffle, ScalarsUp, WeightsDown, local_trajectory, replay_trajectory
from featherfl.algorithms.baffle_replay import ReplayDown, SyncDown
from featherfl.algorithms.base import ClientData, Context
from featherfl.algorithms.training import evaluate_model
from featherfl.config import ConfigError
from featherfl.schema import build_config
from featherfl.experiment import prepare, run_experiment
from support.mnist import tiny_mnist as _tiny_mnist
from support.wire_overhead import header_bytes


def _tiny_problem(seed: int, d: int = 12, classes: int = 4, n: int = 64):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(d, 16), nn.Hardswish(), nn.Linear(16, classes))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return model, x, y


def _true_grad(model, x, y) -> torch.Tensor:
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    return g


def _mean_cosine(k: int, difference: str, trials: int = 4) -> float:
    cos = []
    for t in range(trials):
        model, x, y = _tiny_problem(t)
        true = _true_grad(model, x, y)
        f = zo.FlatModel(model)
        theta = f.get()
        seeds = [zo.direction_seed(1000 + t, 0, j) for j in range(k)]
        d = zo.loss_differences(f, theta, x, y, seeds, 1e-3, difference)
        est = zo.reconstruct(d, seeds, f.numel, 1e-3)
        cos.append(float(F.cosine_similarity(est, true, dim=0)))
    return sum(cos) / len(cos)


@pytest.mark.parametrize("difference", ["forward", "central"])
def test_estimate_aligns_with_backprop_gradient_and_improves_with_k(difference):
    """Stein's identity (Eq. 3-5): the estimate points along the true gradient, tighter with more directions."""
    few, many = _mean_cosine(10, difference), _mean_cosine(1000, difference)
    assert few > 0.05
    assert many > 0.6
    assert many > few + 0.3


def test_estimate_is_unbiased_in_scale():
    """The 1/(K sigma) factor is right: projected on the true gradient, the estimate has the gradient's norm."""
    model, x, y = _tiny_problem(7)
    true = _true_grad(model, x, y)
    f = zo.FlatModel(model)
    seeds = [zo.direction_seed(3, 0, j) for j in range(4000)]
    est = zo.reconstruct(zo.loss_differences(f, f.get(), x, y, seeds, 1e-3, "central"), seeds, f.numel, 1e-3)
    ratio = float(est @ true / (true @ true))
    assert 0.85 < ratio < 1.15


def _cfg(**kw):
    base = {
        "algorithm": "baffle",
        "dataset": "synthetic",
        "data.synthetic_samples": 200,
        "clients": 3,
        "rounds": 3,
        "model.width": 16,
        "partition.name": "iid",
        "baffle.k": 8,
        "baffle.batch_size": 16,
        "baffle.sigma": 1e-3,
    }
    base.update(kw)
    return build_config(overrides=list(base.items()))


def _roundtrip(payload, specs, rnd=1):
    return wire.decode(wire.encode(payload, rnd, 0), specs, round=rnd, run=0)


def test_shared_directions_server_rebuild_equals_mean_of_client_estimates():
    """Shared seeds: the estimate of the weighted-average scalars is the weighted average of the estimates."""
    p = prepare(_cfg(**{"baffle.optimizer": "sgd", "baffle.lr": 1.0, "baffle.momentum": 0.0, "baffle.batch_size": 0}))
    alg: Baffle = p.algorithm
    client = alg.make_client()
    before = alg.server.theta.data.clone()
    downs = alg.configure(1, [0, 1, 2])
    assert len({d.seed for d in downs.values()}) == 1
    replies, ests, ns = {}, [], []
    for cid in range(3):
        down = _roundtrip(downs[cid], client.downlink_specs(1))
        up = _roundtrip(client.update(1, down, p.client_data[cid], {}), alg.uplink_specs(1, cid))
        replies[cid] = up
        seeds = [zo.direction_seed(down.seed, 0, j) for j in range(8)]
        ests.append(zo.reconstruct(up.d[0], seeds, client.f.numel, 1e-3))
        ns.append(up.num_samples)
    alg.aggregate(1, replies)
    w = torch.tensor(ns, dtype=torch.float32) / sum(ns)
    expected = (torch.stack(ests) * w[:, None]).sum(0)
    applied = before - alg.server.theta.data
    assert torch.allclose(applied, expected, rtol=1e-4, atol=1e-6)
    assert float(expected.norm()) > 0


def test_per_client_directions_differ_between_clients():
    p = prepare(_cfg(**{"baffle.directions": "per-client"}))
    downs = p.algorithm.configure(1, [0, 1, 2])
    assert len({d.seed for d in downs.values()}) == 3


@pytest.mark.parametrize("k", [1, 100, 1000])
def test_uplink_is_4k_bytes_plus_small_header(k):
    up = ScalarsUp(torch.zeros(1, k), 10**9)
    n = len(wire.encode(up, 2**31, 2**31))
    assert n - 4 * k == header_bytes(up)
    assert header_bytes(up) <= 128


def test_run_ledger_shows_4k_plus_header_per_client(tmp_path):
    cfg = _cfg(**{"baffle.k": 25})
    out, summary = run_experiment(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    samples = json.loads((out / "clients.json").read_text())["samples"]
    for r in rows:
        assert r["bytes_up_per_client"]
        for cid, b in r["bytes_up_per_client"].items():
            header = header_bytes(ScalarsUp(torch.zeros(1, 25), samples[int(cid)]))
            assert b == 4 * 25 + header
            assert header <= 128
    assert summary["client_compute"] == "forward-only"


def test_client_uses_inference_mode_and_leaves_no_grad():
    p = prepare(_cfg())
    alg = p.algorithm
    client = alg.make_client()
    seen = []
    client.model.register_forward_pre_hook(lambda m, a: seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled())))
    down = alg.configure(1, [0])[0]
    client.update(1, down, p.client_data[0], {})
    assert seen and all(inf for inf, _ in seen)
    assert all(p.grad is None for p in client.model.parameters())
    assert len(seen) == 8 + 1


def test_central_difference_uses_2k_passes():
    p = prepare(_cfg(**{"baffle.difference": "central"}))
    client = p.algorithm.make_client()
    calls = []
    client.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    client.update(1, p.algorithm.configure(1, [0])[0], p.client_data[0], {})
    assert len(calls) == 16


def test_fedavg_mode_server_replay_equals_client_trajectory():
    """FedAvg mode uploads only scalars; the server must rebuild the client's end weights exactly."""
    p = prepare(_cfg(**{"baffle.mode": "fedavg", "baffle.local_steps": 4, "baffle.local_lr": 0.5, "baffle.clip": 0.5}))
    alg = p.algorithm
    client = alg.make_client()
    down = alg.configure(1, [1])[1]
    data = p.client_data[1]
    theta = alg.server.theta.data.clone()
    batches = client._batches(1, data)
    end, diffs = local_trajectory(client.f, theta, batches, down.seed, client.o)
    up = _roundtrip(client.update(1, down, data, {}), alg.uplink_specs(1, 1))
    assert torch.equal(up.d, diffs)
    assert up.d.shape == (4, 8)
    replayed = replay_trajectory(theta, up.d, down.seed, alg.o)
    assert torch.equal(replayed, end)
    assert not torch.equal(end, theta)
    alg.aggregate(1, {1: up})
    assert torch.equal(alg.server.theta.data, end)


def test_fedavg_mode_local_steps_use_distinct_batches_and_directions():
    p = prepare(_cfg(**{"baffle.mode": "fedavg", "baffle.local_steps": 3}))
    client = p.algorithm.make_client()
    b = client._batches(1, p.client_data[0])
    assert not torch.equal(b[0][0], b[1][0])
    assert zo.direction_seed(5, 0, 0) != zo.direction_seed(5, 1, 0)


def _simulate_replay(cfg, rounds, participation):
    """Run rounds through the wire; each client keeps its own replica state."""
    p = prepare(cfg)
    alg = p.algorithm
    client = alg.make_client()
    states = {c: {} for c in range(cfg["clients"])}
    kinds = []
    for rnd in range(1, rounds + 1):
        present = participation(rnd)
        downs = alg.configure(rnd, present)
        replies = {}
        for cid in present:
            raw = wire.encode(downs[cid], rnd, 0)
            down = wire.decode(raw, client.downlink_specs(rnd), round=rnd, run=0)
            kinds.append((rnd, cid, down.KIND, len(raw)))
            up = client.update(rnd, down, p.client_data[cid], states[cid])
            replies[cid] = _roundtrip(up, alg.uplink_specs(rnd, cid), rnd)
            if isinstance(down, (SyncDown, ReplayDown)):
                assert torch.equal(states[cid]["theta"], alg.server.theta.data)
        alg.aggregate(rnd, replies)
    return alg, kinds


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"baffle.optimizer": "sgd", "baffle.momentum": 0.9, "baffle.directions": "per-client", "baffle.aggregation": "median"},
        {"baffle.mode": "fedavg", "baffle.local_steps": 2, "baffle.local_lr": 0.2},
    ],
)
def test_replay_downlink_reproduces_global_weights_exactly(extra):
    cfg = _cfg(**{"baffle.downlink": "replay", "rounds": 6, **extra})
    alg, kinds = _simulate_replay(cfg, 6, lambda r: [c for c in range(3) if (r + c) % 3 != 0])
    by_kind = {}
    for _, _, kind, n in kinds:
        by_kind.setdefault(kind, []).append(n)
    assert "baffle.replay" in by_kind and "baffle.sync" in by_kind
    assert max(by_kind["baffle.replay"]) < min(by_kind["baffle.sync"])


def test_replay_falls_back_to_weights_when_history_is_larger_than_the_model():
    """A replica that missed many rounds gets the model again once the history outgrows it."""
    cfg = _cfg(**{"baffle.downlink": "replay", "baffle.k": 200, "rounds": 10})
    alg, kinds = _simulate_replay(cfg, 10, lambda r: [0, 1, 2] if r in (1, 2, 10) else [0, 1])
    got = {(r, c): (k, n) for r, c, k, n in kinds}
    assert alg.server.theta.numel() < 8 * 200
    assert got[(2, 2)][0] == "baffle.replay"
    assert got[(10, 2)][0] == "baffle.sync"
    assert got[(10, 0)][0] == "baffle.replay"
    assert got[(10, 0)][1] < got[(10, 2)][1]


def test_replay_run_uses_fewer_downlink_bytes_and_same_metrics(tmp_path):
    _, s_w = run_experiment(_cfg(**{"rounds": 4}), tmp_path / "w")
    _, s_r = run_experiment(_cfg(**{"rounds": 4, "baffle.downlink": "replay", "engine.dropout": 0.3}), tmp_path / "r")
    _, s_r0 = run_experiment(_cfg(**{"rounds": 4, "baffle.downlink": "replay"}), tmp_path / "r0")
    assert s_r0["final_accuracy"] == s_w["final_accuracy"]
    assert s_r0["bytes_down"] < s_w["bytes_down"]
    assert s_r["clients_rejected"] == 0


def test_resume_gives_identical_metrics(tmp_path):
    cfg = _cfg(**{"rounds": 4, "baffle.downlink": "replay", "baffle.ema": 0.5})
    _, full = run_experiment(cfg, tmp_path / "full")
    _, _ = run_experiment(cfg.replace(rounds=2), tmp_path / "part")
    _, resumed = run_experiment(cfg, tmp_path / "part", resume=True)
    assert resumed["final_accuracy"] == full["final_accuracy"]
    assert resumed["final_loss"] == full["final_loss"]


def test_batchnorm_model_is_refused_by_the_cli(tmp_path, capsys):
    rc = cli.main(["run", "--algorithm", "baffle", "--model", "lenet", "--set", "model.norm=batch", "--out", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "BatchNorm" in err and "model.norm=group" in err
    assert not (tmp_path / "x").exists()


def test_hardswish_is_the_default_activation_and_can_be_overridden():
    alg = prepare(_cfg()).algorithm
    assert any(isinstance(m, nn.Hardswish) for m in alg.global_model.modules())
    alg = prepare(_cfg(**{"baffle.activation": "model"})).algorithm
    assert any(isinstance(m, nn.ReLU) for m in alg.global_model.modules())


def test_model_init_fine_tuning_starts_from_the_checkpoint(tmp_path):
    cfg = _cfg()
    src = prepare(cfg).algorithm.global_model
    sd = {k: v + 1.0 for k, v in src.state_dict().items()}
    torch.save(sd, tmp_path / "init.pt")
    alg = prepare(cfg.replace(**{"model.init": str(tmp_path / "init.pt")})).algorithm
    start = torch.cat([v.reshape(-1) for v in sd.values()])
    assert torch.equal(alg.server.theta.data, start)


def test_clip_bounds_the_server_step():
    p = prepare(_cfg(**{"baffle.optimizer": "sgd", "baffle.lr": 1.0, "baffle.clip": 1e-3, "baffle.sigma": 1e-4}))
    alg = p.algorithm
    client = alg.make_client()
    before = alg.server.theta.data.clone()
    downs = alg.configure(1, [0, 1])
    alg.aggregate(1, {c: client.update(1, downs[c], p.client_data[c], {}) for c in (0, 1)})
    assert float((alg.server.theta.data - before).abs().max()) <= 1e-3 * (1 + 1e-5)


def test_ema_warms_up_then_decays_at_the_configured_rate():
    """Warm-up decay min(d, (1+n)/(10+n)): after one update the evaluated EMA is mostly the new
    weights (not the random initialisation); late in a run it decays at the configured d."""
    p = prepare(_cfg(**{"baffle.ema": 0.9, "baffle.optimizer": "sgd", "baffle.lr": 1.0}))
    alg = p.algorithm
    client = alg.make_client()
    start = alg.server.theta.data.clone()
    downs = alg.configure(1, [0])
    alg.aggregate(1, {0: client.update(1, downs[0], p.client_data[0], {})})
    assert torch.allclose(alg.ema, 0.1 * start + 0.9 * alg.server.theta.data)
    alg.ema_updates = 1000
    before = alg.ema.clone()
    downs = alg.configure(2, [0])
    alg.aggregate(2, {0: client.update(2, downs[0], p.client_data[0], {})})
    assert torch.allclose(alg.ema, 0.9 * before + 0.1 * alg.server.theta.data)
    alg.f.put(torch.zeros_like(start))
    got = alg.evaluate(p.dataset.test_x, p.dataset.test_y)
    alg.f.put(alg.ema)
    ema = evaluate_model(alg.global_model, p.dataset.test_x, p.dataset.test_y)
    alg.f.put(alg.server.theta.data)
    raw = evaluate_model(alg.global_model, p.dataset.test_x, p.dataset.test_y)
    assert (got["accuracy"], got["loss"], got["raw_accuracy"], got["raw_loss"]) == (ema["accuracy"], ema["loss"], raw["accuracy"], raw["loss"])
    assert got["loss"] != got["raw_loss"]


def test_robust_aggregation_limits_one_poisoned_client():
    p = prepare(_cfg(**{"clients": 5, "baffle.aggregation": "median", "baffle.optimizer": "sgd", "baffle.lr": 1e-3}))
    alg = p.algorithm
    client = alg.make_client()
    downs = alg.configure(1, list(range(5)))
    replies = {c: client.update(1, downs[c], p.client_data[c], {}) for c in range(5)}
    honest = torch.stack([r.d for r in replies.values()]).abs().max()
    replies[0] = ScalarsUp(torch.full_like(replies[0].d, 1e5), replies[0].num_samples)
    before = alg.server.theta.data.clone()
    alg.aggregate(1, replies)
    step = (alg.server.theta.data - before).norm()
    assert float(step) < float(honest) * 1e3 * 10


def test_bad_config_values_are_config_errors():
    with pytest.raises(ConfigError):
        _cfg(**{"baffle.difference": "backward"})
    with pytest.raises(ConfigError):
        _cfg(**{"baffle.k": 0})


def test_lenet_baffle_is_the_papers_lenet():
    """conv5x5-16, max-pool, conv5x5-64, global average pool, linear, no norm, Hardswish: 26,730 parameters."""
    from featherfl.models import build_model, count_parameters

    model = build_model("lenet-baffle", (1, 28, 28), 10, activation="hardswish")
    assert count_parameters(model) == 26_730
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 16, (5, 5)), (16, 64, (5, 5))]
    assert any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules())
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) for m in model.modules())
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_clip_rescales_by_the_infinity_norm_keeping_the_direction():
    g = torch.tensor([4.0, -2.0, 1.0])
    out = zo.finish_estimate(g.clone(), k=1, sigma=1.0, clip=0.5)
    assert torch.allclose(out, g * 0.125)
    small = torch.tensor([0.1, -0.2])
    assert torch.equal(zo.finish_estimate(small.clone(), 1, 1.0, 0.5), small)


def test_adam_betas_and_weight_decay_reach_the_server_optimizer():
    alg = prepare(_cfg(**{"baffle.beta2": 0.99, "baffle.weight_decay": 5e-4, "baffle.lr": 1e-2})).algorithm
    group = alg.server.opt.param_groups[0]
    assert group["betas"] == (0.9, 0.99)
    assert group["weight_decay"] == 5e-4 and group["lr"] == 1e-2


def test_fedavg_mode_directions_are_seeded_per_client_even_when_shared():
    p = prepare(_cfg(**{"baffle.mode": "fedavg", "baffle.local_steps": 2, "baffle.directions": "shared"}))
    downs = p.algorithm.configure(1, [0, 1, 2])
    assert len({d.seed for d in downs.values()}) == 3


def test_fedavg_mode_client_adam_is_replayed_exactly_and_differs_from_sgd():
    """Client Adam (paper: Adam on every client) with weight decay: the server still rebuilds the end weights."""
    kw = {"baffle.mode": "fedavg", "baffle.local_steps": 3, "baffle.local_lr": 0.01, "baffle.clip": 0.3, "baffle.weight_decay": 5e-4}
    ends = {}
    for opt in ("adam", "sgd"):
        p = prepare(_cfg(**kw, **{"baffle.local_optimizer": opt, "baffle.beta2": 0.99}))
        alg = p.algorithm
        client = alg.make_client()
        theta = alg.server.theta.data.clone()
        down = alg.configure(1, [0])[0]
        end, diffs = local_trajectory(client.f, theta, client._batches(1, p.client_data[0]), down.seed, client.o)
        assert torch.equal(replay_trajectory(theta, diffs, down.seed, alg.o), end)
        alg.aggregate(1, {0: client.update(1, down, p.client_data[0], {})})
        assert torch.equal(alg.server.theta.data, end)
        ends[opt] = end - theta
    # Adam's first step moves every coordinate by about lr, SGD's by lr * |estimate|.
    assert float(ends["adam"].abs().median()) > 5 * float(ends["sgd"].abs().median())


def test_per_client_estimates_are_clipped_before_they_are_averaged():
    """Each client clips its own estimate (the paper's code), so the step is the mean of clipped estimates."""
    p = prepare(_cfg(**{"baffle.directions": "per-client", "baffle.optimizer": "sgd", "baffle.lr": 1.0, "baffle.clip": 1e-3, "baffle.sigma": 1e-4}))
    alg = p.algorithm
    client = alg.make_client()
    before = alg.server.theta.data.clone()
    downs = alg.configure(1, [0, 1])
    replies = {c: client.update(1, downs[c], p.client_data[c], {}) for c in (0, 1)}
    alg.aggregate(1, replies)
    clipped = []
    for c in (0, 1):
        seeds = [zo.direction_seed(downs[c].seed, 0, j) for j in range(8)]
        clipped.append(zo.reconstruct(replies[c].d[0], seeds, client.f.numel, 1e-4, 1e-3))
    ns = torch.tensor([float(replies[c].num_samples) for c in (0, 1)])
    expected = (torch.stack(clipped) * (ns / ns.sum())[:, None]).sum(0)
    assert torch.allclose(before - alg.server.theta.data, expected, rtol=1e-3, atol=1e-6)


def test_steps_walk_through_the_client_data_in_passes():
    """Like a data loader's epochs: each pass of ceil(n / batch) steps sees every sample once."""
    p = prepare(_cfg(**{"clients": 2, "data.synthetic_samples": 80, "baffle.batch_size": 8}))
    client = p.algorithm.make_client()
    data = p.client_data[0]
    per_pass = -(-len(data) // 8)
    key = lambda x: tuple(x.reshape(-1)[:6].tolist())  # noqa: E731
    passes = []
    for first in (1, 1 + per_pass):
        seen = [key(x) for r in range(first, first + per_pass) for xb, _ in client._batches(r, data) for x in xb]
        assert len(seen) == len(data) == len(set(seen))
        passes.append(seen)
    assert passes[0] != passes[1]


def test_server_model_takes_a_typed_round_entry():
    from featherfl.algorithms.baffle_replay import RoundEntry

    alg = prepare(_cfg(**{"baffle.optimizer": "sgd", "baffle.lr": 1.0})).algorithm
    entry = RoundEntry((5,), (1,), torch.ones(1, 1, 8), True)
    before = alg.server.theta.data.clone()
    alg.server.apply(entry)
    seeds = [zo.direction_seed(5, 0, j) for j in range(8)]
    assert torch.allclose(before - alg.server.theta.data, zo.reconstruct(torch.ones(8), seeds, before.numel(), 1e-3))
    assert RoundEntry.from_state(entry.to_state()) == entry or torch.equal(RoundEntry.from_state(entry.to_state()).diffs, entry.diffs)


def test_reproduce_baffle_mnist_quick_writes_the_table_and_a_normal_run(tmp_path):
    _tiny_mnist(tmp_path / "data")
    out = tmp_path / "out"
    rc = cli.main(["reproduce", "baffle-mnist", "--quick", "--data-dir", str(tmp_path / "data"), "--out", str(out), "--quiet"])
    assert rc == 0
    table = json.loads((out / "reproduce.json").read_text())
    (row,) = table["rows"]
    assert row["paper"] == 0.9517 and 0.0 <= row["ours"] <= 1.0
    run = out / "baffle"
    cfg = build_config((run / "config.toml").read_text())
    assert (cfg["model.name"], cfg["baffle.beta2"], cfg["baffle.clip"], cfg["baffle.ema"], cfg["baffle.directions"]) == ("lenet-baffle", 0.99, 0.3, 0.995, "per-client")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    samples = json.loads((run / "clients.json").read_text())["samples"]
    k = cfg["baffle.k"]
    for r in rows:
        for cid, b in r["bytes_up_per_client"].items():
            assert b == 4 * k + header_bytes(ScalarsUp(torch.zeros(1, k), samples[int(cid)]))
    total = sum(r["bytes_up"] + r["bytes_down"] for r in rows)
    assert row["bytes_per_client"] == total / cfg["clients"]
    assert row["ours"] == rows[-1]["accuracy"] and "raw_accuracy" in rows[-1]
    assert "| BAFFLE, LeNet" in (out / "reproduce.md").read_text()


def test_reproduce_baffle_mnist_rejects_bad_files_before_writing(tmp_path, capsys):
    folder = _tiny_mnist(tmp_path / "data")
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    out = tmp_path / "out"
    rc = cli.main(["reproduce", "baffle-mnist", "--quick", "--data-dir", str(tmp_path / "data"), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "t10k-labels" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_perturbation_needs_no_direction_buffer_the_size_of_the_model(monkeypatch):
    """Issue 14 item 4: W + sigma eps_k is generated chunk by chunk into the model's own weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 300), nn.Hardswish(), nn.Linear(300, 4))
    f = zo.FlatModel(model)
    assert f.numel > 2**16  # more than one chunk
    theta = f.get()
    kept = theta.clone()
    x, y = torch.randn(16, 300), torch.randint(0, 4, (16,))
    seeds = [zo.direction_seed(9, 0, j) for j in range(6)]
    big = []
    for name in ("empty", "empty_like", "zeros", "zeros_like", "randn"):
        real = getattr(torch, name)

        def spy(*a, _real=real, **kw):
            t = _real(*a, **kw)
            if t.numel() >= f.numel:
                big.append(t.numel())
            return t

        monkeypatch.setattr(torch, name, spy)
    d = zo.loss_differences(f, theta, x, y, seeds, 1e-3)
    monkeypatch.undo()
    assert big == []
    assert torch.equal(theta, kept)
    g = torch.zeros_like(theta)
    again = zo.loss_differences(f, theta, x, y, seeds, 1e-3, accumulate=g)
    assert torch.equal(d, again)
    assert torch.equal(zo.finish_estimate(g, 6, 1e-3), zo.reconstruct(d, seeds, f.numel, 1e-3))
