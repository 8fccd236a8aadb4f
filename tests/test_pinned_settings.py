"""Settings a test must pin down: each of these fails if the setting were read and then ignored."""

import dataclasses

import pytest
import torch

from featherfl.algorithms import fd as fd_module
from featherfl.algorithms import fedavg as fedavg_module
from featherfl.schema import build_config
from featherfl.experiment import Experiment, prepare
from featherfl.models import flat_state

BASE = [("clients", 3), ("rounds", 1), ("engine.threads", 1), ("data.max_train", 300), ("partition.name", "iid")]


def _replies(p, cids=(0, 1, 2)):
    downs = p.algorithm.configure(1, list(cids))
    client = p.algorithm.make_client()
    return {c: client.update(1, downs[c], p.client_data[c], {}) for c in cids}


STATE = {
    "fedavg": lambda alg: flat_state(alg.global_model),
    "baffle": lambda alg: alg.server.theta.detach().clone(),
}


@pytest.mark.parametrize(
    "method, extra",
    [
        ("fedavg", [("fedavg.max_steps", 3)]),
        ("baffle", [("baffle.mode", "fedavg"), ("baffle.local_steps", 2), ("baffle.k", 8)]),
    ],
)
def test_server_lr_scales_the_server_step(method, extra):
    """new = old + server_lr * (aggregate - old): half the server_lr, half the step."""
    full = prepare(build_config(overrides=BASE + extra + [("algorithm", method), (f"{method}.server_lr", 1.0)]))
    half = prepare(build_config(overrides=BASE + extra + [("algorithm", method), (f"{method}.server_lr", 0.5)]))
    replies = _replies(full)
    before = STATE[method](full.algorithm)
    assert torch.equal(before, STATE[method](half.algorithm))
    full.algorithm.aggregate(1, replies)
    half.algorithm.aggregate(1, replies)
    step_full = STATE[method](full.algorithm) - before
    step_half = STATE[method](half.algorithm) - before
    assert float(step_full.norm()) > 1e-4
    assert torch.allclose(step_half, 0.5 * step_full, atol=1e-6)


def test_fedavg_weights_by_claimed_samples_when_asked():
    """weighting = samples: the mean is sum n_k w_k / sum n_k (McMahan et al. 2017, Alg. 1)."""
    p = prepare(build_config(overrides=BASE + [("algorithm", "fedavg"), ("fedavg.max_steps", 3), ("fedavg.weighting", "samples")]))
    replies = _replies(p)
    replies = {c: dataclasses.replace(r, num_samples=n) for (c, r), n in zip(replies.items(), (1, 2, 7))}
    p.algorithm.aggregate(1, replies)
    expected = sum(n * replies[c].weights for c, n in zip(replies, (1, 2, 7))) / 10
    assert torch.allclose(flat_state(p.algorithm.global_model), expected, atol=1e-6)


def test_fd_temperature_reaches_the_client_loss_and_uploads(monkeypatch):
    seen = []
    real = fd_module.distillation_loss

    def spy(logits, y, teacher, has_teacher, gamma, temperature):
        seen.append(temperature)
        return real(logits, y, teacher, has_teacher, gamma, temperature)

    monkeypatch.setattr(fd_module, "distillation_loss", spy)
    cfg = build_config(overrides=BASE + [("algorithm", "fd"), ("fd.local_steps", 3), ("fd.temperature", 3.0), ("rounds", 2)])
    p = prepare(cfg)
    ups = _replies(p)
    assert seen and set(seen) == {3.0}
    # the uploaded rows are softmax(logits / T): a higher temperature gives flatter rows
    cold = prepare(build_config(overrides=BASE + [("algorithm", "fd"), ("fd.local_steps", 3), ("fd.temperature", 1.0)]))
    cold_ups = _replies(cold)
    hot_max = float(torch.stack([u.logits.max(1).values for u in ups.values()]).mean())
    cold_max = float(torch.stack([u.logits.max(1).values for u in cold_ups.values()]).mean())
    assert hot_max < cold_max


@pytest.mark.parametrize("vectorize", ["off", "auto"])
def test_faug_generated_samples_reach_fedavg_local_training(tmp_path, monkeypatch, vectorize):
    """After FAug's setup, the local loop (one by one, or batched) trains on own + generated samples."""
    sizes = []
    real, real_many = fedavg_module.train_epochs, fedavg_module.vectorized.train_clients_stacked

    def spy(model, x, y, *a, **kw):
        sizes.append(len(y))
        return real(model, x, y, *a, **kw)

    def spy_many(model, runs, *a, **kw):
        sizes.extend(len(r.y) for r in runs)
        return real_many(model, runs, *a, **kw)

    monkeypatch.setattr(fedavg_module, "train_epochs", spy)
    monkeypatch.setattr(fedavg_module.vectorized, "train_clients_stacked", spy_many)
    tiny_gan = [("faug.gan_steps", 30), ("faug.gan_batch", 16), ("faug.noise_dim", 8), ("faug.gen_hidden", [32, 32]), ("faug.disc_hidden", [32])]
    cfg = build_config(overrides=[("dataset", "synthetic"), ("clients", 3), ("rounds", 1), ("model.name", "mlp"), ("model.width", 16),
                                  ("partition.name", "label-deficient"), ("fedavg.max_steps", 2), ("engine.threads", 1), ("algorithm", "fedavg"),
                                  ("faug.enabled", True), ("engine.vectorize", vectorize), *tiny_gan])
    p = prepare(cfg)
    Experiment(p, tmp_path / "run", progress=False).run()
    own = [len(c) for c in p.client_data]
    assert len(sizes) == 3 and all(s > o for s, o in zip(sorted(sizes), sorted(own)))
