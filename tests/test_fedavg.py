import copy

import torch
import torch.nn.functional as F

from featherfl import wire
from featherfl.algorithms.aggregate import combine
from featherfl.algorithms.base import ClientData
from featherfl.algorithms.fedavg import FedAvg, FedSGD
from featherfl.engines.base import run_client
from featherfl.experiment import prepare
from featherfl.models import flat_state


def _one_round(alg, data, rnd=1):
    client = alg.make_client()
    down = alg.configure(rnd, [0])[0]
    reply = run_client(client, rnd, wire.encode(down, rnd, 0), data, {}, 0)
    payload = wire.decode(reply, alg.uplink_specs(rnd, 0), round=rnd, run=0)
    alg.aggregate(rnd, {0: payload})


def test_fedavg_one_client_one_step_equals_centralized_sgd(cfg_factory):
    cfg = cfg_factory(clients=1, partition__name="iid", fedavg__local_epochs=1, fedavg__batch_size=0, fedavg__momentum=0.0, fedavg__lr=0.1)
    p = prepare(cfg)
    alg = p.algorithm
    ref = copy.deepcopy(alg.global_model)
    data = p.client_data[0]
    _one_round(alg, data)
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    F.cross_entropy(ref(data.x), data.y).backward()
    opt.step()
    assert torch.allclose(flat_state(alg.global_model), flat_state(ref), atol=1e-6)
    # and the step actually moved the model (the test can fail)
    assert not torch.allclose(flat_state(alg.global_model), flat_state(p.ctx.build_model()))


def test_fedsgd_step_equals_central_gradient_step(cfg_factory):
    cfg = cfg_factory(algorithm="fedsgd", clients=1, partition__name="iid", fedsgd__momentum=0.0, fedsgd__lr=0.3)
    p = prepare(cfg)
    alg = p.algorithm
    ref = copy.deepcopy(alg.global_model)
    _one_round(alg, p.client_data[0])
    F.cross_entropy(ref(p.client_data[0].x), p.client_data[0].y).backward()
    with torch.no_grad():
        for q in ref.parameters():
            q -= 0.3 * q.grad
    assert torch.allclose(flat_state(alg.global_model), flat_state(ref), atol=1e-6)


def test_fedavg_average_is_sample_weighted(cfg_factory):
    cfg = cfg_factory(clients=2)
    alg = FedAvg(prepare(cfg).ctx)
    n = alg.n
    a, b = torch.zeros(n), torch.ones(n)
    from featherfl.algorithms.fedavg import WeightsUp

    alg.aggregate(1, {0: WeightsUp(a, 30), 1: WeightsUp(b, 10)})
    assert torch.allclose(flat_state(alg.global_model), torch.full((n,), 0.25))


def test_robust_rules_resist_one_outlier():
    honest = torch.randn(9, 50) * 0.01 + 1.0
    evil = torch.full((1, 50), 1e4)
    x = torch.cat([honest, evil])
    w = torch.ones(10)
    assert combine(x, w, "mean").mean() > 100
    for rule in ("median", "trimmed-mean"):
        assert (combine(x, w, rule, beta=0.1) - 1.0).abs().max() < 0.05
    clipped = combine(x, w, "norm-clip", clip=1.0, reference=torch.ones(50))
    assert (clipped - 1.0).norm() < 0.2


def test_client_training_is_deterministic(cfg_factory):
    cfg = cfg_factory(clients=3)
    p1, p2 = prepare(cfg), prepare(cfg)
    for p in (p1, p2):
        _one_round(p.algorithm, p.client_data[1])
    assert torch.equal(flat_state(p1.algorithm.global_model), flat_state(p2.algorithm.global_model))


def test_clientdata_isolated(cfg_factory):
    """Each training sample belongs to exactly one client, and a client holds exactly its own rows."""
    import numpy as np

    p = prepare(cfg_factory(clients=4))
    idx = np.concatenate(p.parts)
    assert len(idx) == len(np.unique(idx)) == len(p.dataset.train_y)  # disjoint and complete
    for part, c in zip(p.parts, p.client_data):
        assert isinstance(c, ClientData)
        assert torch.equal(c.x, p.dataset.train_x[torch.as_tensor(part)]) and torch.equal(c.y, p.dataset.train_y[torch.as_tensor(part)])
    c0 = p.client_data[0]
    c0.x.add_(1.0)  # a client changing its data must not change another's or the dataset
    assert not torch.equal(c0.x, p.dataset.train_x[torch.as_tensor(p.parts[0])])
