"""FAug (Jeong et al. 2018, Sec. 3): target labels, seed upload, cGAN, one generator download."""

import json

import pytest
import torch

from featherfl import wire
from featherfl.algorithms.base import ClientData, Context
from featherfl.algorithms.faug import (
    FAug,
    FAugClient,
    GeneratorDown,
    SeedRequest,
    SeedsUp,
    augment,
    choose_redundant,
    find_target_labels,
    generation_plan,
    label_counts,
    pl_device_server,
    pl_inter_device,
    train_cgan,
    augmented,
)
from featherfl.algorithms.fd import FDClient
from featherfl.schema import build_config
from featherfl.experiment import Experiment, config_for_resume, prepare
from featherfl.models import flat_state
from support.rows import metric_rows
from support.wire_overhead import header_bytes

L = 10
TINY_GAN = [
    ("faug.gan_steps", 30),
    ("faug.gan_batch", 16),
    ("faug.noise_dim", 8),
    ("faug.gen_hidden", [32, 32]),
    ("faug.disc_hidden", [32]),
]
SMALL = [
    ("dataset", "synthetic"),
    ("data.synthetic_samples", 2000),
    ("clients", 3),
    ("rounds", 2),
    ("model.name", "mlp"),
    ("model.width", 16),
    ("partition.name", "label-deficient"),
    ("fd.local_steps", 5),
    ("fedavg.max_steps", 5),
    ("engine.threads", 1),
    *TINY_GAN,
]


def _cfg(*extra):
    return build_config(base=dict(SMALL), overrides=list(extra))  # SMALL: both families' settings, as a shared file


def _deficient_data(cid=0):
    """40 samples of each label except label 3 (4 samples) and label 8 (none)."""
    counts = [40, 40, 40, 4, 40, 40, 40, 40, 0, 40]
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    g = torch.Generator().manual_seed(cid)
    return ClientData(cid, torch.rand(len(y), 1, 8, 8, generator=g), y, L)


# --- the paper's quantities on hand cases ---------------------------------------------------


def test_target_labels_are_found_from_the_data_with_the_threshold():
    counts = torch.tensor([40, 38, 42, 5, 40, 0, 36, 41, 39, 19])
    assert find_target_labels(counts, 0.5) == [3, 5]  # share = 28: < 14
    assert find_target_labels(counts, 0.7) == [3, 5, 9]  # < 19.6


def test_redundant_labels_are_non_targets_the_device_has():
    counts = torch.tensor([40, 38, 42, 5, 40, 0, 36, 41, 39, 19])
    for s in range(20):
        r = choose_redundant(counts, [3, 5], 4, torch.Generator().manual_seed(s))
        assert len(r) == 4 and not set(r) & {3, 5}


def test_privacy_leakage_formulas():
    assert pl_device_server(3, 2) == pytest.approx(0.6)
    assert pl_device_server(1, 3) == pytest.approx(0.25)
    assert pl_device_server(0, 0) == 0.0
    assert pl_inter_device(3, 9) == pytest.approx(1 / 3)
    assert pl_inter_device(2, 10) == pytest.approx(0.2)
    assert pl_inter_device(0, 0) == 0.0


def test_generation_plan_makes_label_counts_near_uniform():
    counts = torch.tensor([40, 38, 42, 5, 40, 0, 36, 41, 39, 3])
    targets = find_target_labels(counts, 0.5)
    plan = generation_plan(counts, targets, available=list(range(L)))
    after = counts.clone()
    for c, n in plan.items():
        after[c] += n
    assert set(plan) == {3, 5, 9}
    assert int(after.max()) - int(after.min()) <= 6  # the spread of the labels it already had
    assert all(int(after[c]) == 39 for c in plan)  # topped up to the mean of the others (276 / 7)
    assert 5 not in generation_plan(counts, targets, available=[3, 9])  # the generator cannot make 5


# --- the client half -------------------------------------------------------------------------


def test_seed_upload_is_uint8_targets_plus_redundant_and_counted(tmp_path):
    cfg = _cfg(("algorithm", "fd"), ("faug.enabled", True), ("faug.redundant_labels", 2))
    client = FAugClient(FDClient(Context(cfg, (1, 8, 8), L, 3)))
    state = {}
    data = _deficient_data()
    up = client.update(1, SeedRequest(), data, state)
    assert isinstance(up, SeedsUp) and up.pixels.dtype == torch.uint8
    uploaded = sorted(set(up.labels))
    assert state["faug_targets"] == [3]  # label 8 is a target too but has no sample to send
    assert len(state["faug_redundant"]) == 2 and 3 in uploaded and 8 not in uploaded
    assert uploaded == sorted([3] + state["faug_redundant"])
    assert label_counts(torch.tensor(up.labels), L).max() <= 5
    n = len(up.labels)
    assert n == 4 + 2 * 5
    assert len(wire.encode(up)) == n * 64 + header_bytes(up)  # 8 bits per pixel


def test_generated_samples_make_the_device_near_uniform():
    cfg = _cfg(("algorithm", "fd"), ("faug.enabled", True))
    ctx = Context(cfg, (1, 8, 8), L, 3)
    client = FAugClient(FDClient(ctx))
    data = _deficient_data()
    state = {}
    client.update(1, SeedRequest(), data, state)
    g = flat_state(client.generator)
    done = client.update(1, GeneratorDown(g, list(range(L)), 7), data, state)
    aug = augmented(data, state)
    x, y = aug.x, aug.y
    counts = label_counts(y, L)
    assert counts.tolist() == [40] * L
    assert done.generated == 36 + 40
    assert x.shape == (400, 1, 8, 8) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert done.pl_device_server == pytest.approx(pl_device_server(1, 2))
    assert done.pl_inter_device == pytest.approx(1 / 7)


# --- the server half --------------------------------------------------------------------------


def test_augment_keeps_shape_and_range_and_changes_pixels():
    x = torch.zeros(4, 1, 8, 8)
    x[:, :, 2:6, 3:5] = 1
    a = augment(x, torch.Generator().manual_seed(0), 15, 0.1, 0.05)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.allclose(a, x)


def test_cgan_is_conditioned_on_the_label():
    """Seeds of label 0 are bright on the left, label 1 on the right: so must the samples be."""
    cfg = _cfg(("algorithm", "fd"), ("faug.gan_steps", 400), ("faug.gan_batch", 32), ("faug.gan_lr", 2e-3), ("faug.aug_rotate", 0.0), ("faug.aug_shift", 0.0))
    ctx = Context(cfg, (1, 8, 8), 2, 2)
    x = torch.zeros(10, 1, 8, 8)
    x[:5, :, :, :4] = 1
    x[5:, :, :, 4:] = 1
    y = torch.tensor([0] * 5 + [1] * 5)
    g = train_cgan(x, y, ctx, cfg.section("faug"))
    with torch.no_grad():
        z = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
        s0 = (g(z, torch.zeros(64, dtype=torch.int64)) + 1) / 2
        s1 = (g(z, torch.ones(64, dtype=torch.int64)) + 1) / 2
    assert float(s0[..., :4].mean() - s0[..., 4:].mean()) > 0.5
    assert float(s1[..., 4:].mean() - s1[..., :4].mean()) > 0.5


@pytest.mark.parametrize("algorithm", ["fd", "fedavg"])
def test_faug_runs_once_as_a_first_phase(tmp_path, algorithm):
    cfg = _cfg(("algorithm", algorithm), ("faug.enabled", True))
    p = prepare(cfg)
    out = tmp_path / algorithm
    exp = Experiment(p, out, progress=False)
    summary = exp.run()
    rows = metric_rows(out / "metrics.jsonl")
    first, second = rows[0]["bytes_by_category"], rows[1]["bytes_by_category"]
    assert {"up_samples", "down_generator"} <= set(first)
    assert "up_samples" not in second and "down_generator" not in second
    n_gen = flat_state(p.algorithm.make_client().generator).numel()
    assert first["down_generator"] == 3 * (4 * n_gen + header_bytes(GeneratorDown(torch.zeros(n_gen), p.algorithm.labels, p.algorithm.union)))
    assert rows[0]["faug_seed_samples"] > 0 and rows[0]["faug_generated"] > 0
    assert (out / "faug_samples.png").stat().st_size > 100
    assert 0 < summary["faug_pl_device_server_mean"] <= 1
    states = exp.engine.client_states()
    for cid in range(3):
        before = label_counts(p.client_data[cid].y, L).float()
        y = augmented(p.client_data[cid], states[cid]).y
        after = label_counts(y, L).float()
        others = [float(before[c]) for c in range(L) if c not in states[cid]["faug_targets"]]
        assert float(before.min()) < 0.5 * min(others)  # label-deficient before,
        assert float(after.min()) >= min(others)  # now within the spread of the labels it had
        for t in states[cid]["faug_targets"]:
            assert float(after[t]) == round(sum(others) / len(others))
    targets = p.ctx.info["target_labels"]
    assert [sorted(states[c]["faug_targets"]) for c in range(3)] == [sorted(t) for t in targets]


def test_fedavg_without_faug_sends_no_setup_bytes(tmp_path):
    out = tmp_path / "plain"
    p = prepare(_cfg(("algorithm", "fedavg")))
    Experiment(p, out, progress=False).run()
    rows = metric_rows(out / "metrics.jsonl")
    assert set(rows[0]["bytes_by_category"]) == {"up_weights", "down_weights"}
    assert "faug" not in p.algorithm.state_dict()
    assert not (out / "faug_samples.png").exists()


def test_seeds_whose_labels_do_not_match_their_pixels_are_dropped():
    cfg = _cfg(("algorithm", "fd"), ("faug.enabled", True))
    p = prepare(cfg)
    alg = p.algorithm
    good = SeedsUp(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), [1, 2])
    bad = SeedsUp(torch.zeros(3, 1, 8, 8, dtype=torch.uint8), [1])
    too_many = SeedsUp(torch.zeros(6, 1, 8, 8, dtype=torch.uint8), [4] * 6)
    m = alg.setup_aggregate(1, {0: good, 1: bad, 2: too_many})
    assert m["faug_seeds_rejected"] == 2 and m["faug_seed_samples"] == 2
    assert alg.labels == [1, 2]


def test_faug_resume_is_identical(tmp_path):
    extra = [("algorithm", "fd"), ("faug.enabled", True), ("rounds", 3)]
    Experiment(prepare(_cfg(*extra)), tmp_path / "full", progress=False).run()
    Experiment(prepare(_cfg(*extra[:-1], ("rounds", 2))), tmp_path / "part", progress=False).run()
    cfg = config_for_resume(tmp_path / "part", [("rounds", 3)])
    Experiment(prepare(cfg), tmp_path / "part", resume=True, progress=False).run()
    assert metric_rows(tmp_path / "part" / "metrics.jsonl") == metric_rows(tmp_path / "full" / "metrics.jsonl")


# --- FAug is a wrapper: any method gets it, and no method carries FAug code --------------------


def test_method_modules_carry_no_faug_code():
    import inspect

    from featherfl.algorithms import baffle, fd, fedavg, fedpeft

    for mod in (fedavg, fd, baffle, fedpeft):
        assert "faug" not in inspect.getsource(mod).lower(), mod.__name__


@pytest.mark.parametrize("algorithm", ["fedsgd", "baffle"])
def test_any_method_gets_faug_and_trains_on_generated_samples(tmp_path, algorithm, monkeypatch):
    """FedSGD and BAFFLE have no FAug line, yet with faug.enabled their clients see own + generated samples."""
    seen = []
    real = FAugClient.update

    def spy(self, rnd, down, data, state):
        if not isinstance(down, (SeedRequest, GeneratorDown)):
            seen.append((data.cid, len(augmented(data, state)), len(data)))
        return real(self, rnd, down, data, state)

    monkeypatch.setattr(FAugClient, "update", spy)
    own = {"fedsgd": ("fedsgd.batch_size", 8), "baffle": ("baffle.k", 2)}[algorithm]
    p = prepare(_cfg(("algorithm", algorithm), ("faug.enabled", True), own))
    assert isinstance(p.algorithm, FAug) and p.algorithm.name == algorithm
    out = tmp_path / algorithm
    summary = Experiment(p, out, progress=False).run()
    assert summary["status"] == "completed" and summary["faug_generated"] > 0
    assert seen and all(n_aug > n_own for _, n_aug, n_own in seen)
    assert "up_samples" in metric_rows(out / "metrics.jsonl")[0]["bytes_by_category"]


def test_old_configs_with_method_faug_keys_still_load():
    on = build_config(base=dict(SMALL), overrides=[("algorithm", "fd"), ("fd.faug", True), ("fedavg.faug", False)])
    assert on["faug.enabled"] is True
    off = build_config(base=dict(SMALL), overrides=[("algorithm", "fedavg"), ("fd.faug", True)])
    assert off["faug.enabled"] is False  # another method's key was a no-op there, and stays one


def test_faug_on_data_that_is_not_images_is_a_config_error():
    from featherfl.config import ConfigError
    from featherfl.algorithms.faug import check_input

    with pytest.raises(ConfigError, match="faug.enabled"):
        check_input((64,))
    check_input((1, 8, 8))


def test_gan_stops_once_the_judge_recognises_its_samples():
    """The stopping rule: check every 50 steps, stop at 90 % recognition, long before the 3,000-step cap."""
    import featherfl.algorithms.faug_gan as faug_module

    base = [("algorithm", "fd"), ("faug.gan_batch", 32), ("faug.gan_lr", 2e-3), ("faug.aug_rotate", 0.0), ("faug.aug_shift", 0.0)]
    x = torch.zeros(10, 1, 8, 8)
    x[:5, :, :, :4] = 1
    x[5:, :, :, 4:] = 1
    y = torch.tensor([0] * 5 + [1] * 5)
    cfg = _cfg(*base, ("faug.gan_steps", 3000), ("faug.check_every", 50), ("faug.stop_recognition", 0.9))
    ctx = Context(cfg, (1, 8, 8), 2, 2)
    stats = {}
    faug_module._TRAINED.clear()
    g = train_cgan(x, y, ctx, cfg.section("faug"), stats)
    assert stats["gan_steps"] < 3000 and stats["gan_steps"] % 50 == 0 and stats["recognition"] >= 0.9
    # the same inputs again: the trained generator is reused, identical, with the same stats
    again = {}
    g2 = train_cgan(x, y, ctx, cfg.section("faug"), again)
    assert again == stats and all(torch.equal(a, b) for a, b in zip(g.state_dict().values(), g2.state_dict().values()))
    # without the rule every step runs
    off = _cfg(*base, ("faug.gan_steps", 120), ("faug.check_every", 0))
    stats_off = {}
    train_cgan(x, y, Context(off, (1, 8, 8), 2, 2), off.section("faug"), stats_off)
    assert stats_off == {"gan_steps": 120, "recognition": None}


@pytest.mark.parametrize("patience", [3, 0])
def test_gan_patience_stops_a_stalled_gan_and_keeps_its_best_generator(monkeypatch, patience):
    """Recognition that stops improving: with patience 3 training ends 3 checks after the best one and
    hands out the generator of that best check; with patience 0 it runs to gan_steps and keeps the last."""
    import featherfl.algorithms.faug_gan as faug_module

    scores = iter([0.5, 0.7, 0.6, 0.65, 0.6, 0.6])
    snaps = []

    def scripted(g, judge, labels, gen, per_label=32):
        snaps.append({k: v.clone() for k, v in g.state_dict().items()})
        return next(scores)

    monkeypatch.setattr(faug_module, "recognition", scripted)
    base = [("algorithm", "fd"), ("faug.gan_batch", 16), ("faug.aug_rotate", 0.0), ("faug.aug_shift", 0.0)]
    x = torch.rand(10, 1, 8, 8)
    y = torch.tensor([0] * 5 + [1] * 5)
    cfg = _cfg(*base, ("faug.gan_steps", 60), ("faug.check_every", 10), ("faug.stop_recognition", 0.95), ("faug.patience", patience))
    stats = {}
    faug_module._TRAINED.clear()
    g = train_cgan(x, y, Context(cfg, (1, 8, 8), 2, 2), cfg.section("faug"), stats)
    kept = g.state_dict()
    if patience:
        assert stats == {"gan_steps": 50, "recognition": 0.7, "best_step": 20} and len(snaps) == 5
        assert all(torch.equal(kept[k], snaps[1][k]) for k in kept)
        assert not all(torch.equal(kept[k], snaps[4][k]) for k in kept)
    else:
        assert stats == {"gan_steps": 60, "recognition": 0.6} and len(snaps) == 6
        assert all(torch.equal(kept[k], snaps[5][k]) for k in kept)


def test_judge_tells_the_seed_labels_apart():
    from featherfl.algorithms.faug import train_judge

    cfg = _cfg(("algorithm", "fd"), ("faug.aug_rotate", 0.0), ("faug.aug_shift", 0.0))
    x = torch.zeros(10, 1, 8, 8)
    x[:5, :, :, :4] = 1
    x[5:, :, :, 4:] = 1
    y = torch.tensor([0] * 5 + [1] * 5)
    judge = train_judge(x, y, Context(cfg, (1, 8, 8), 2, 2), cfg.section("faug"), steps=100)
    assert (judge(x).argmax(1) == y).all()
