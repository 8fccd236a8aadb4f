"""BAFFLE over FedPEFT's subsets of a pretrained backbone, the seed pool, and low-precision clients
(a tiny random BERT made here stands in for MiniLM)."""

from __future__ import annotations

import pytest
import torch

from featherfl import wire
from featherfl.algorithms import baffle_peft, zo
from featherfl.algorithms.baffle import ScalarsUp, WeightsDown, local_trajectory, replay_trajectory
from featherfl.algorithms.baffle_pool import PoolDown, materialize
from featherfl.algorithms.baffle_replay import ReplayDown, SyncDown
from featherfl.config import ConfigError
from featherfl.schema import build_config
from featherfl.experiment import prepare
from support.wire_overhead import header_bytes

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

WORDS = "good bad great awful fine movie film plot acting boring fun dull sad happy".split()


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    from support.tiny_bert import make_bert_folder

    return make_bert_folder(tmp_path_factory.mktemp("tiny-bert"), WORDS)


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    root = tmp_path_factory.mktemp("sst2")
    g = torch.Generator().manual_seed(0)
    pos, neg = ["good", "great", "fine", "fun", "happy"], ["bad", "awful", "boring", "dull", "sad"]

    def rows(n):
        out = ["sentence\tlabel"]
        for i in range(n):
            label = i % 2
            words = [(pos if label else neg)[int(torch.randint(5, (1,), generator=g))] for _ in range(1 + i % 4)] + ["movie"]
            out.append(" ".join(words) + f" \t{label}")
        return "\n".join(out) + "\n"

    (root / "train.tsv").write_text(rows(60))
    (root / "dev.tsv").write_text(rows(20))
    return str(root)


def cfg(bert, sst2, method="bias", **kw):
    base = {
        "algorithm": "baffle",
        "dataset": "sst2",
        "clients": 3,
        "rounds": 3,
        "partition.name": "iid",
        "engine.threads": 1,
        "data.dir": sst2,
        "data.max_length": 12,
        "model.pretrained": bert,
        "baffle.peft": True,
        "fedpeft.method": method,
        "baffle.k": 6,
        "baffle.sigma": 1e-3,
        "baffle.lr": 0.01,
    }
    base.update({k.replace("__", "."): v for k, v in kw.items()})
    return build_config(overrides=list(base.items()))


def _roundtrip(payload, specs, rnd=1):
    return wire.decode(wire.encode(payload, rnd, 0), specs, round=rnd, run=0)


@pytest.mark.parametrize("method", ["bias", "lora", "prompt", "adapter", "head"])
def test_only_trainable_tensors_move_and_travel(bert, sst2, method):
    p = prepare(cfg(bert, sst2, method, fedpeft__cache_features=False))
    alg = p.algorithm
    trainable = {n for n, t in alg.global_model.named_parameters() if t.requires_grad}
    assert trainable and alg.f.numel == sum(t.numel() for n, t in alg.global_model.named_parameters() if n in trainable)
    assert alg.f.numel < sum(t.numel() for t in alg.global_model.parameters()) / 3
    server_frozen = {n: t.detach().clone() for n, t in alg.global_model.named_parameters() if n not in trainable}
    client = alg.make_client()
    client_frozen = {n: t.detach().clone() for n, t in client.model.named_parameters() if n not in trainable}
    assert all(torch.equal(client_frozen[n], server_frozen[n]) for n in server_frozen)  # built alike, never sent
    down = alg.configure(1, [0])[0]
    assert isinstance(down, WeightsDown) and down.weights.numel() == alg.f.numel  # the subset alone
    # every perturbed forward pass: the frozen tensors are the same bits, the trainable ones move
    seen = []
    hook = client.model.register_forward_pre_hook(
        lambda m, a: seen.append((all(torch.equal(t, client_frozen[n]) for n, t in m.named_parameters() if n in client_frozen), client.f.flat.clone()))
    )
    up = _roundtrip(client.update(1, down, p.client_data[0], {}), alg.uplink_specs(1, 0))
    hook.remove()
    assert len(seen) == 7 and all(ok for ok, _ in seen)
    assert all(not torch.equal(seen[0][1], flat) for _, flat in seen[1:])
    alg.aggregate(1, {0: up})
    for n, t in alg.global_model.named_parameters():
        if n in server_frozen:
            assert torch.equal(t, server_frozen[n]), n
    assert not torch.equal(alg.server.theta.data, down.weights)
    assert up.d.shape == (1, 6) and float(up.d.abs().sum()) > 0


@pytest.mark.parametrize("k", [4, 64])
def test_uplink_is_4k_bytes_plus_header_over_a_pretrained_backbone(bert, sst2, k):
    p = prepare(cfg(bert, sst2, "lora", baffle__k=k))
    alg = p.algorithm
    up = alg.make_client().update(1, alg.configure(1, [1])[1], p.client_data[1], {})
    raw = wire.encode(up, 1, 0)
    assert isinstance(up, ScalarsUp) and len(raw) == 4 * k + header_bytes(up) and header_bytes(up) <= 128


def test_cached_head_features_give_the_same_scalars_as_the_full_forward(bert, sst2):
    ups = {}
    for cache in (True, False):
        p = prepare(cfg(bert, sst2, "head", fedpeft__cache_features=cache))
        alg = p.algorithm
        client = alg.make_client()
        assert (client.f.model is client.model.head) == cache
        ups[cache] = client.update(1, alg.configure(1, [2])[2], p.client_data[2], {}).d
    torch.testing.assert_close(ups[True], ups[False], rtol=1e-4, atol=1e-6)


def _simulate(c, rounds, present):
    p = prepare(c)
    alg = p.algorithm
    client = alg.make_client()
    states = {cid: {} for cid in range(c["clients"])}
    sizes = []
    for rnd in range(1, rounds + 1):
        cids = present(rnd)
        downs = alg.configure(rnd, cids)
        replies = {}
        for cid in cids:
            raw = wire.encode(downs[cid], rnd, 0)
            down = wire.decode(raw, client.downlink_specs(rnd), round=rnd, run=0)
            sizes.append((rnd, cid, down.KIND, len(raw)))
            up = client.update(rnd, down, p.client_data[cid], states[cid])
            # the client's weights, rebuilt from what it holds, are the server's bit for bit
            if isinstance(down, PoolDown):
                assert torch.equal(materialize(client.theta0, states[cid]["pool_coef"], alg.o["pool_root"]), alg.server.theta.data)
            if isinstance(down, (SyncDown, ReplayDown)):
                assert torch.equal(states[cid]["theta"], alg.server.theta.data)
            replies[cid] = _roundtrip(up, alg.uplink_specs(rnd, cid), rnd)
        alg.aggregate(rnd, replies)
    return alg, client, states, sizes


def test_seed_pool_downlink_rebuilds_the_server_weights_bit_exactly_after_missed_rounds(bert, sst2):
    c = cfg(bert, sst2, "bias", baffle__seed_pool=32, baffle__downlink="pool", baffle__optimizer="sgd", baffle__lr=0.05, baffle__clip=0.5, rounds=8)
    alg, client, states, sizes = _simulate(c, 8, lambda r: [0, 1, 2] if r in (1, 8) else [0, 1])
    # client 2 missed rounds 2-7: it caught up from pool coefficients, no weights
    kinds = {(r, cid): (k, n) for r, cid, k, n in sizes}
    assert all(k == "baffle.pool" for k, _ in kinds.values())
    dense = PoolDown(torch.zeros(0, dtype=torch.int32), torch.zeros(32), 8, 2**61, 2**61)
    assert kinds[(8, 2)][1] <= len(wire.encode(dense, 8, 0))  # at most N values (+ header), however many rounds were missed
    assert kinds[(8, 0)][1] < kinds[(8, 2)][1]
    assert 0 < int(torch.count_nonzero(alg.pool.coef)) <= 32
    # the server's weights are a function of W_0 and the N coefficients alone, and they moved
    assert torch.equal(materialize(client.theta0, alg.pool.coef, alg.o["pool_root"]), alg.server.theta.data)
    assert not torch.equal(client.theta0, alg.server.theta.data)
    held = materialize(client.theta0, states[2]["pool_coef"], alg.o["pool_root"])
    assert not torch.equal(held, alg.server.theta.data)  # client 2 holds round 7's model, not round 8's


def test_seed_pool_directions_repeat_and_pool_catch_up_is_checked(bert, sst2):
    c = cfg(bert, sst2, "bias", baffle__seed_pool=4, baffle__downlink="pool", baffle__optimizer="sgd", baffle__k=8)
    p = prepare(c)
    alg = p.algorithm
    from featherfl.algorithms.baffle import dir_seed

    seeds = [dir_seed(alg.o, 123, 0, j) for j in range(8)]
    assert len(set(seeds)) <= 4  # 8 directions from a pool of 4
    client = alg.make_client()
    down = alg.configure(1, [0])[0]
    bad = PoolDown(down.idx, down.coef, down.through, down.fingerprint ^ 1, down.seed)
    with pytest.raises(RuntimeError, match="fingerprint"):
        client.update(1, bad, p.client_data[0], {})


def test_seed_pool_downlink_is_smaller_than_replay_for_a_client_that_missed_many_rounds(bert, sst2):
    present = lambda r: [0, 1, 2] if r in (1, 10) else [0, 1]  # noqa: E731
    common = dict(baffle__seed_pool=16, baffle__optimizer="sgd", baffle__k=16, rounds=10, baffle__directions="per-client")
    _, _, _, pool = _simulate(cfg(bert, sst2, "bias", baffle__downlink="pool", **common), 10, present)
    _, _, _, replay = _simulate(cfg(bert, sst2, "bias", baffle__downlink="replay", **common), 10, present)
    p = {(r, c): n for r, c, _, n in pool}
    rp = {(r, c): (k, n) for r, c, k, n in replay}
    assert rp[(10, 2)][0] == "baffle.replay"
    assert p[(10, 2)] < rp[(10, 2)][1]


def test_int8_client_runs_quantized_linears_and_the_server_replays_its_scalars_exactly(bert, sst2, monkeypatch):
    c = cfg(bert, sst2, "bias", baffle__client_precision="int8", baffle__mode="fedavg", baffle__local_steps=2, baffle__local_lr=0.05, baffle__batch_size=8)
    p = prepare(c)
    alg = p.algorithm
    client = alg.make_client()
    q = [m for m in client.model.modules() if isinstance(m, baffle_peft.Int8Linear)]
    assert q and not any(isinstance(m, torch.nn.Linear) and not m.weight.requires_grad for m in client.model.modules())
    assert not any(isinstance(m, baffle_peft.Int8Linear) for m in alg.global_model.modules())  # the server keeps fp32
    calls = []
    real = torch.ops.quantized.linear_dynamic
    monkeypatch.setattr(baffle_peft.torch.ops.quantized, "linear_dynamic", lambda *a: calls.append(1) or real(*a), raising=False)
    down = alg.configure(1, [0])[0]
    theta = alg.server.theta.data.clone()
    end, diffs = local_trajectory(client.f, theta, client._batches(1, p.client_data[0]), down.seed, client.o)
    assert calls  # the quantized forward is on the client's path
    up = _roundtrip(client.update(1, down, p.client_data[0], {}), alg.uplink_specs(1, 0))
    assert torch.equal(up.d, diffs)
    assert torch.equal(replay_trajectory(theta, up.d, down.seed, alg.o), end)
    alg.aggregate(1, {0: up})
    assert torch.equal(alg.server.theta.data, end)
    # int8 losses are not fp32 losses
    fp = prepare(cfg(bert, sst2, "bias", baffle__mode="fedavg", baffle__local_steps=2, baffle__local_lr=0.05, baffle__batch_size=8))
    _, d32 = local_trajectory(fp.algorithm.make_client().f, theta, client._batches(1, p.client_data[0]), down.seed, client.o)
    assert not torch.equal(d32, diffs)


def test_bf16_client_forward_runs_under_autocast(bert, sst2):
    p = prepare(cfg(bert, sst2, "lora", baffle__client_precision="bf16"))
    client = p.algorithm.make_client()
    dtypes = []
    client.model.head.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    client.update(1, p.algorithm.configure(1, [0])[0], p.client_data[0], {})
    assert dtypes and set(dtypes) == {torch.bfloat16}


def test_replay_downlink_over_a_pretrained_backbone_carries_only_the_subset(bert, sst2):
    c = cfg(bert, sst2, "bias", baffle__downlink="replay")
    alg, _, _, sizes = _simulate(c, 3, lambda r: [0, 1])
    kinds = [k for _, _, k, _ in sizes]
    assert kinds.count("baffle.sync") == 2 and kinds.count("baffle.replay") == 4
    sync = next(n for _, _, k, n in sizes if k == "baffle.sync")
    assert sync < 4 * alg.f.numel + 4096


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"baffle.peft": False}, "baffle.peft"),
        ({"baffle.client_precision": "int8", "fedpeft.method": "full"}, "baffle.client_precision"),
        ({"baffle.downlink": "pool"}, "baffle.downlink"),
        ({"baffle.downlink": "pool", "baffle.seed_pool": 8}, "baffle.downlink"),  # adam is not a sum of pool directions
    ],
)
def test_bad_settings_are_one_line_config_errors(bert, sst2, kw, key):
    with pytest.raises(ConfigError, match=key) as e:
        prepare(cfg(bert, sst2, **{k.replace(".", "__"): v for k, v in kw.items()}))
    assert "\n" not in str(e.value)


def test_int8_needs_a_pretrained_backbone():
    with pytest.raises(ConfigError, match="client_precision"):
        prepare(build_config(overrides=[("algorithm", "baffle"), ("baffle.client_precision", "int8")]))


def test_precision_flat_keeps_fp32_weights_for_perturbation():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    f = baffle_peft.PrecisionFlat(model, "bf16")
    assert f.flat.dtype == torch.float32
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    seeds = [zo.direction_seed(1, 0, j) for j in range(3)]
    d = zo.loss_differences(f, f.get(), x, y, seeds, 0.5)
    assert d.shape == (3,) and float(d.abs().sum()) > 0


def test_text_data_needs_baffle_peft_and_is_refused_before_the_run_without_it(bert, sst2):
    p = prepare(cfg(bert, sst2, "bias"))  # accepted as is: the text reader knows baffle.peft
    assert p.algorithm is not None
    with pytest.raises(ConfigError, match="baffle.peft") as e:
        prepare(cfg(bert, sst2, "bias", baffle__peft=False))
    assert "\n" not in str(e.value)
