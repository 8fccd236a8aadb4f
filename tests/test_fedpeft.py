"""FedPEFT: what Sun et al. 2022 say the method does, checked on the digits data with a tiny ViT.

The backbone stays frozen bit for bit; only the trainable tensors travel, each
under its own name; zero-initialised adapters and LoRA leave the pretrained
function unchanged; head-only clients may cache backbone features without
changing the result.
"""

import json

import pytest
import torch

from featherfl import wire
from featherfl.algorithms.base import ClientData
from featherfl.algorithms.fedpeft import build_peft_model, field_name
from featherfl.config import ConfigError
from featherfl.schema import build_config
from featherfl.experiment import prepare, run_experiment
from featherfl.models import pretrain as pretrain_mod
from featherfl.models.pretrain import load_backbone, pretrain, save_backbone
from support.wire_overhead import header_bytes

pytestmark = pytest.mark.xdist_group("fedpeft")  # its module fixture is costly: one test process runs the whole file

PEFT = ("bias", "adapter", "prompt", "lora", "head")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A small ViT pretrained for one epoch on digits 0-4 (the default source task, shortened)."""
    from featherfl.data.sources import load_dataset

    ds = load_dataset(build_config())
    net, meta = pretrain(ds.train_x, ds.train_y, "vit-tiny", width=48, epochs=1)
    return str(save_backbone(net, meta, tmp_path_factory.mktemp("bb") / "vit.safetensors"))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATHERFL_CACHE", str(tmp_path / "cache"))


def cfg(backbone, method="bias", **kw):
    base = {
        "algorithm": "fedpeft",
        "clients": 4,
        "rounds": 2,
        "data.max_train": 240,
        "data.max_test": 120,
        "partition.min_samples": 5,
        "engine.threads": 1,
        "model.pretrained": backbone,
        "fedpeft.method": method,
        "fedpeft.lr": 0.1,
    }
    base.update({k.replace("__", "."): v for k, v in kw.items()})
    return build_config(overrides=list(base.items()))


def client_update(p, rnd=1, cid=0, state=None):
    alg = p.algorithm
    client = alg.make_client()
    down = alg.configure(rnd, [cid])[cid]
    up = client.update(rnd, down, p.client_data[cid], {} if state is None else state)
    return alg, client, up


@pytest.mark.parametrize("method", PEFT)
def test_frozen_tensors_bit_identical_and_trainable_ones_move(backbone, method, tmp_path):
    p = prepare(cfg(backbone, method))
    alg = p.algorithm
    before = {n: t.detach().clone() for n, t in alg.model.named_parameters()}
    _, client, up = client_update(p)
    alg.aggregate(1, {0: up})
    reference, _ = load_backbone(backbone, 10, (1, 8, 8))
    ref = dict(reference.named_parameters())
    for model in (alg.model, client.model):
        for n, t in model.named_parameters():
            if n in alg.names:
                continue
            assert not t.requires_grad, n
            assert torch.equal(t, before[n]), n
            plain = n.replace(".base.", ".")
            if plain in ref:
                assert torch.equal(t, ref[plain]), n
    moved = [n for n in alg.names if not torch.equal(alg.params[n], before[n])]
    assert moved, "no trainable tensor changed"
    assert all(n.startswith("head.") for n in alg.names) == (method == "head")


def test_uplink_is_exactly_the_trainable_tensors_by_name_and_bytes(backbone, tmp_path):
    p = prepare(cfg(backbone, "bias"))
    alg, client, up = client_update(p)
    names = [n for n, t in alg.model.named_parameters() if t.requires_grad]
    assert names == alg.names
    assert all(n.endswith("bias") or n.startswith("head.") for n in names)
    assert set(up.tensor_fields()) == {field_name(n) for n in names}
    data = wire.encode(up, 1, p.ctx.run_id)
    tensor_bytes = sum(alg.params[n].numel() * 4 for n in names)
    assert len(data) == tensor_bytes + header_bytes(up)
    back = wire.decode(data, alg.uplink_specs(1, 0), round=1, run=p.ctx.run_id)
    for n in names:
        assert torch.equal(getattr(back, field_name(n)), client.params[n].detach())
    # the ledger counts exactly those bytes
    out, summary = run_experiment(cfg(backbone, "bias", rounds=1, engine__fraction=0.5), tmp_path / "run")
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    for cid, nbytes in row["bytes_up_per_client"].items():
        c = int(cid)
        payload = client.update(1, alg.configure(1, [c])[c], p.client_data[c], {})
        assert nbytes == len(wire.encode(payload, 1, p.ctx.run_id))
    assert summary["trainable_parameters"] == sum(alg.params[n].numel() for n in names)
    assert summary["trainable_share"] == pytest.approx(summary["trainable_parameters"] / summary["total_parameters"])


def test_bias_uplink_is_at_most_two_percent_of_full(tmp_path):
    """The acceptance criterion, on the default-size vit-tiny."""
    from featherfl.data.sources import load_dataset

    ds = load_dataset(build_config())
    net, meta = pretrain(ds.train_x[:64], ds.train_y[:64], "vit-tiny", epochs=1)
    path = str(save_backbone(net, meta, tmp_path / "vit.safetensors"))
    sizes = {}
    for method in ("bias", "full"):
        p = prepare(cfg(path, method, data__max_train=80, clients=2))
        alg = p.algorithm
        up = alg.Up(**{field_name(n): t for n, t in alg.trainable().items()}, num_samples=1)
        sizes[method] = len(wire.encode(up))
    assert sizes["bias"] <= 0.02 * sizes["full"], sizes


@pytest.mark.parametrize("method", ["adapter", "lora"])
def test_adapters_and_lora_at_init_leave_the_output_unchanged(backbone, method):
    plain = prepare(cfg(backbone, "head")).algorithm.model
    peft = prepare(cfg(backbone, method)).algorithm.model
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(plain(x), peft(x))
        # the check can fail: a non-zero up-projection / B factor changes the function
        key = next(n for n in peft.state_dict() if n.endswith("adapter.up.weight" if method == "adapter" else "lora_B"))
        w = dict(peft.named_parameters())[key]
        w.add_(0.1 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))
        assert not torch.allclose(plain(x), peft(x))


def test_shared_adapter_is_one_module_for_every_block(backbone):
    own = prepare(cfg(backbone, "adapter")).algorithm
    shared = prepare(cfg(backbone, "adapter", fedpeft__adapter_shared=True)).algorithm
    n_own = sum(own.params[n].numel() for n in own.names if ".adapter." in n)
    n_shared = sum(shared.params[n].numel() for n in shared.names if ".adapter." in n)
    assert n_own == 4 * n_shared  # vit-tiny has 4 blocks


@pytest.mark.parametrize("depth,rows", [("deep", 4), ("shallow", 1)])
def test_prompt_tokens_per_layer_or_input_only(backbone, depth, rows):
    alg = prepare(cfg(backbone, "prompt", fedpeft__prompt_depth=depth, fedpeft__prompt_tokens=3)).algorithm
    assert sorted(alg.names) == ["head.bias", "head.weight", "prompts.tokens"]
    assert tuple(alg.params["prompts.tokens"].shape) == (rows, 3, 48)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        a = alg.model(x)
        alg.params["prompts.tokens"][-1].add_(torch.randn(3, 48))  # (a constant shift would vanish in LayerNorm)
        assert not torch.allclose(a, alg.model(x))


def test_head_feature_cache_gives_the_same_result(backbone, tmp_path):
    runs = {}
    for cache in (True, False):
        c = cfg(backbone, "head", fedpeft__cache_features=cache, fedpeft__local_epochs=2)
        p = prepare(c)
        from featherfl.experiment import Experiment

        summary = Experiment(p, tmp_path / str(cache), progress=False).run()
        runs[cache] = (summary, p.algorithm.trainable())
    assert runs[True][0]["final_accuracy"] == runs[False][0]["final_accuracy"]
    for n, t in runs[True][1].items():
        torch.testing.assert_close(t, runs[False][1][n], rtol=1e-4, atol=1e-5)


def test_cached_features_are_computed_once(backbone, monkeypatch):
    p = prepare(cfg(backbone, "head"))
    client = p.algorithm.make_client()
    calls = []
    real = client.model.features
    monkeypatch.setattr(client.model, "features", lambda x: calls.append(len(x)) or real(x))
    for rnd in (1, 2):
        client.update(rnd, p.algorithm.configure(rnd, [0])[0], p.client_data[0], {})
    assert sum(calls) == len(p.client_data[0])


def test_same_config_same_metrics_and_resume(backbone, tmp_path):
    from featherfl.experiment import config_for_resume, Experiment

    _, a = run_experiment(cfg(backbone, "lora", rounds=2), tmp_path / "a")
    _, b = run_experiment(cfg(backbone, "lora", rounds=1), tmp_path / "b")
    c2 = config_for_resume(tmp_path / "b", [("rounds", 2)])
    b = Experiment(prepare(c2), tmp_path / "b", resume=True, progress=False).run()
    assert a["final_accuracy"] == b["final_accuracy"] and a["final_loss"] == b["final_loss"]


def test_default_backbone_is_pretrained_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_mod, "DEFAULT_EPOCHS", 1)
    c = build_config(overrides=[("algorithm", "fedpeft"), ("clients", 2), ("rounds", 1), ("data.max_train", 60), ("partition.min_samples", 5), ("model.width", 24)])
    p = prepare(c)
    files = list((tmp_path / "cache" / "backbones").glob("*.safetensors"))
    assert len(files) == 1
    assert "classes [0, 1, 2, 3, 4]" in p.algorithm.backbone
    stamp = files[0].stat().st_mtime_ns
    prepare(c)
    assert files[0].stat().st_mtime_ns == stamp


def test_pretrain_command_and_bad_backbones(tmp_path, backbone, capsys):
    from featherfl.cli import main

    out = tmp_path / "b.safetensors"
    assert main(["pretrain", "--epochs", "1", "--width", "24", "--classes", "5,6,7,8,9", "--out", str(out)]) == 0
    assert "classes [5, 6, 7, 8, 9]" in capsys.readouterr().out
    alg = prepare(cfg(str(out), "bias", clients=2)).algorithm
    assert alg.model.dim == 24
    assert main(["pretrain", "--classes", "3"]) == 2
    for bad in (str(tmp_path / "missing.safetensors"), "timm:vit_tiny_patch16_224"):
        with pytest.raises(ConfigError, match="model.pretrained"):
            prepare(cfg(bad))
    with pytest.raises(ConfigError, match="fedpeft.method"):
        cfg(backbone, "everything")


def _peft_replies(p, counts):
    import dataclasses

    downs = p.algorithm.configure(1, [0, 1, 2])
    client = p.algorithm.make_client()
    ups = {c: client.update(1, downs[c], p.client_data[c], {}) for c in (0, 1, 2)}
    return {c: dataclasses.replace(u, num_samples=n) for (c, u), n in zip(ups.items(), counts)}


def test_server_lr_and_sample_weighting_shape_the_fedpeft_step(backbone):
    """new = old + server_lr * (sum n_k t_k / sum n_k - old) over the trainable tensors t."""
    full = prepare(cfg(backbone, clients=3, fedpeft__weighting="samples", fedpeft__server_lr=1.0))
    half = prepare(cfg(backbone, clients=3, fedpeft__weighting="samples", fedpeft__server_lr=0.5))
    replies = _peft_replies(full, (1, 2, 7))
    old = full.algorithm.flat().clone()
    full.algorithm.aggregate(1, replies)
    half.algorithm.aggregate(1, replies)
    names = full.algorithm.names
    flat = {c: torch.cat([getattr(r, field_name(n)).reshape(-1) for n in names]) for c, r in replies.items()}
    weighted = (1 * flat[0] + 2 * flat[1] + 7 * flat[2]) / 10
    assert torch.allclose(full.algorithm.flat(), weighted, atol=1e-5)
    assert torch.allclose(half.algorithm.flat() - old, 0.5 * (weighted - old), atol=1e-5)
    assert float((weighted - (flat[0] + flat[1] + flat[2]) / 3).norm()) > 1e-5  # the weights matter here
