"""DP mechanisms and accountants: epsilon behaves as the theory says, clipping bounds each
example's / client's influence, and noise touches only the trainable tensors."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("opacus")

from featherfl.schema import build_config  # noqa: E402
from featherfl.experiment import prepare, run_experiment  # noqa: E402
from featherfl.privacy.accountant import epsilon, noise_for_epsilon  # noqa: E402
from featherfl.privacy.client_level import dp_fedavg_update  # noqa: E402
from featherfl.privacy.dpsgd import dp_sgd_epochs, per_sample_grads  # noqa: E402

pytestmark = pytest.mark.xdist_group("privacy")  # its module fixture is costly: one test process runs the whole file


def test_epsilon_grows_with_steps_and_shrinks_with_noise():
    by_steps = [epsilon([(1.0, 0.05, s)], 1e-5) for s in (10, 100, 1000)]
    assert by_steps[0] < by_steps[1] < by_steps[2]
    by_noise = [epsilon([(z, 0.05, 100)], 1e-5) for z in (0.7, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(by_noise, by_noise[1:]))
    assert epsilon([(1.0, 0.05, 0)], 1e-5) == 0.0
    assert math.isinf(epsilon([(0.0, 0.05, 10)], 1e-5))
    # composition: two halves of a history cost what the whole does
    assert epsilon([(1.0, 0.05, 50), (1.0, 0.05, 50)], 1e-5) == pytest.approx(by_steps[1], rel=1e-9)


def test_noise_for_epsilon_hits_the_target_from_below():
    z = noise_for_epsilon(5.0, 1e-5, 0.1, 200)
    assert epsilon([(z, 0.1, 200)], 1e-5) <= 5.0
    assert epsilon([(z * 0.98, 0.1, 200)], 1e-5) > 5.0


def test_per_sample_grads_match_one_example_at_a_time():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    model[0].weight.requires_grad_(False)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    g, loss = per_sample_grads(model, names, x, y, chunk=4)
    for i in range(6):
        model.zero_grad()
        li = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        li.backward()
        assert loss[i] == pytest.approx(float(li.detach()), rel=1e-5)
        for n, p in model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(g[n][i], p.grad, rtol=1e-5, atol=1e-6)
    assert "0.weight" not in g


def test_dp_sgd_clips_each_example_and_leaves_frozen_tensors_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    x, y = torch.randn(40, 5) * 50, torch.randint(0, 3, (40,))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    # sample rate 1, no noise: the step is the mean of clipped gradients, so its norm is <= clip
    out = dp_sgd_epochs(model, names, x, y, opt, 1, 1.0, 0.01, 0.0, torch.Generator().manual_seed(0))
    step = torch.cat([(before[n] - p.detach()).reshape(-1) for n, p in model.named_parameters() if n in names])
    assert step.norm() <= 0.01 + 1e-6
    assert out["dp_clipped_fraction"] > 0.5
    assert torch.equal(model[0].weight, frozen)


def test_dp_fedavg_bounds_each_client_and_adds_calibrated_noise():
    deltas = torch.tensor([[30.0, 40.0], [0.3, 0.4], [0.0, 0.0]])
    mean, info = dp_fedavg_update(deltas, clip=1.0, noise=0.0, expected=3, gen=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mean, torch.tensor([(0.6 + 0.3) / 3, (0.8 + 0.4) / 3]))
    assert info["dp_clipped_fraction"] == pytest.approx(1 / 3)
    zero = torch.zeros(20000, 1)
    noisy, _ = dp_fedavg_update(zero.T.repeat(4, 1), clip=2.0, noise=1.5, expected=4, gen=torch.Generator().manual_seed(1))
    assert float(noisy.std()) == pytest.approx(1.5 * 2.0 / 4, rel=0.05)


def _digits_cfg(tmp_backbone, **kw):
    base = {
        "algorithm": "fedpeft",
        "clients": 4,
        "rounds": 2,
        "data.max_train": 160,
        "data.max_test": 80,
        "partition.name": "iid",
        "engine.threads": 1,
        "model.pretrained": tmp_backbone,
        "fedpeft.method": "bias",
    }
    base.update({k.replace("__", "."): v for k, v in kw.items()})
    return build_config(overrides=list(base.items()))


@pytest.fixture(scope="module")
def tmp_backbone(tmp_path_factory):
    from featherfl.data.sources import load_dataset
    from featherfl.models.pretrain import pretrain, save_backbone

    ds = load_dataset(build_config())
    net, meta = pretrain(ds.train_x[:100], ds.train_y[:100], "vit-tiny", width=24, epochs=1)
    return str(save_backbone(net, meta, tmp_path_factory.mktemp("bb") / "vit.safetensors"))


def test_sample_level_dp_run_reports_epsilon_within_target(tmp_backbone, tmp_path):
    _, s = run_experiment(_digits_cfg(tmp_backbone, fedpeft__dp="sample", fedpeft__dp_target_epsilon=5.0), tmp_path / "s")
    assert 0 < s["dp_epsilon"] <= 5.0 and s["dp"] == "sample"
    _, s2 = run_experiment(_digits_cfg(tmp_backbone, fedpeft__dp="sample", fedpeft__dp_noise=0.8, rounds=1), tmp_path / "s2")
    _, s3 = run_experiment(_digits_cfg(tmp_backbone, fedpeft__dp="sample", fedpeft__dp_noise=0.8, rounds=2), tmp_path / "s3")
    assert s2["dp_epsilon"] < s3["dp_epsilon"]


def test_client_level_dp_run_reports_the_server_accountant(tmp_backbone, tmp_path):
    _, s = run_experiment(_digits_cfg(tmp_backbone, fedpeft__dp="client", fedpeft__dp_noise=1.0, engine__fraction=0.5), tmp_path / "c")
    assert s["dp_epsilon"] == pytest.approx(epsilon([(1.0, 0.5, 2)], 1e-5))
    frozen_before = {n: t.clone() for n, t in prepare(_digits_cfg(tmp_backbone)).algorithm.model.named_parameters()}
    p = prepare(_digits_cfg(tmp_backbone, fedpeft__dp="client", fedpeft__dp_noise=5.0))
    alg = p.algorithm
    client = alg.make_client()
    replies = {c: client.update(1, alg.configure(1, [c])[c], p.client_data[c], {}) for c in range(4)}
    alg.aggregate(1, replies)
    for n, t in alg.model.named_parameters():
        if n not in alg.names:
            assert torch.equal(t, frozen_before[n]), n


def test_per_example_loop_fallback_matches_vmap():
    from featherfl.privacy.dpsgd import _one_at_a_time

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    names = ["2.weight", "2.bias"]
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    a, la = per_sample_grads(model, names, x, y)
    b, lb = _one_at_a_time(model, names, x, y)
    torch.testing.assert_close(la, lb)
    for n in names:
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-6)
