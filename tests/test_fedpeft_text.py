"""FedPEFT on a Hugging Face encoder loaded offline from a folder (a tiny random BERT made here)."""

import pytest
import torch

from featherfl import wire
from featherfl.algorithms.fedpeft import field_name
from featherfl.config import ConfigError
from featherfl.schema import build_config
from featherfl.experiment import prepare, run_experiment

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

WORDS = "good bad great awful fine movie film plot acting boring fun dull sad happy world sports business tech".split()


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    from support.tiny_bert import make_bert_folder

    return make_bert_folder(tmp_path_factory.mktemp("tiny-bert"), WORDS)


@pytest.fixture(scope="module")
def sst2_folder(tmp_path_factory):
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

    (root / "train.tsv").write_text(rows(80))
    (root / "dev.tsv").write_text(rows(20))
    return str(root)


def tcfg(bert, data, method, **kw):
    base = {
        "algorithm": "fedpeft",
        "dataset": "sst2",
        "clients": 2,
        "rounds": 2,
        "partition.name": "iid",
        "engine.threads": 1,
        "data.dir": data,
        "data.max_length": 16,
        "model.pretrained": bert,
        "fedpeft.method": method,
        "fedpeft.lr": 0.1,
    }
    base.update({k.replace("__", "."): v for k, v in kw.items()})
    return build_config(overrides=list(base.items()))


def test_sst2_tsv_is_tokenized_to_padded_ids(bert_folder, sst2_folder):
    p = prepare(tcfg(bert_folder, sst2_folder, "head"))
    ds = p.dataset
    assert ds.train_x.dtype == torch.int64 and ds.train_x.shape == (80, ds.input_shape[0])
    assert ds.num_classes == 2 and ds.test_y.tolist()[:2] == [0, 1]
    assert (ds.train_x[:, 0] == 2).all()  # [CLS]
    assert (ds.train_x == 0).any()  # padded with [PAD] = 0


@pytest.mark.parametrize("method", ["lora", "prompt", "adapter", "bias"])
def test_text_methods_send_only_their_tensors_and_keep_the_encoder_frozen(bert_folder, sst2_folder, method):
    p = prepare(tcfg(bert_folder, sst2_folder, method))
    alg = p.algorithm
    frozen = {n: t.detach().clone() for n, t in alg.model.named_parameters() if n not in alg.names}
    client = alg.make_client()
    up = client.update(1, alg.configure(1, [0])[0], p.client_data[0], {})
    expect = {"lora": "lora_", "prompt": "prompts.", "adapter": ".adapter.", "bias": "bias"}[method]
    assert all(expect in n or n.startswith("head.") for n in alg.names)
    assert any(expect in n for n in alg.names)
    assert set(up.tensor_fields()) == {field_name(n) for n in alg.names}
    wire.decode(wire.encode(up, 1, p.ctx.run_id), alg.uplink_specs(1, 0), round=1, run=p.ctx.run_id)
    for n, t in client.model.named_parameters():
        if n in frozen:
            assert torch.equal(t, frozen[n]), n
    assert any(not torch.equal(getattr(up, field_name(n)), alg.params[n]) for n in alg.names)


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_lora_and_adapters_at_init_leave_the_encoder_output_unchanged(bert_folder, sst2_folder, method):
    plain = prepare(tcfg(bert_folder, sst2_folder, "head")).algorithm.model
    peft = prepare(tcfg(bert_folder, sst2_folder, method)).algorithm.model
    ids = torch.tensor([[2, 5, 6, 7, 3, 0, 0], [2, 8, 3, 0, 0, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(plain.features(ids), peft.features(ids), rtol=0, atol=1e-6)
        key = next(n for n, _ in peft.named_parameters() if "lora_B" in n or "adapter.up.weight" in n)
        w = dict(peft.named_parameters())[key]
        w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))  # random: a constant shift would vanish in LayerNorm
        assert not torch.allclose(plain.features(ids), peft.features(ids), atol=1e-4)


def test_padding_does_not_change_the_features(bert_folder, sst2_folder):
    model = prepare(tcfg(bert_folder, sst2_folder, "prompt")).algorithm.model
    short = torch.tensor([[2, 5, 6, 3]])
    long = torch.tensor([[2, 5, 6, 3, 0, 0, 0]])
    with torch.no_grad():
        torch.testing.assert_close(model.features(short), model.features(long), rtol=1e-5, atol=1e-5)


def test_run_offline_end_to_end(bert_folder, sst2_folder, tmp_path):
    _, s = run_experiment(tcfg(bert_folder, sst2_folder, "lora"), tmp_path / "run")
    assert s["rounds_completed"] == 2 and s["final_accuracy"] is not None
    assert 0 < s["trainable_share"] < 0.2 and s["backbone"] == bert_folder


def test_missing_model_folder_or_hub_name_offline_is_a_config_error(sst2_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "empty").mkdir()
    for name in (str(tmp_path / "empty"), "some-org/not-a-cached-model"):
        with pytest.raises(ConfigError, match="model.pretrained"):
            prepare(tcfg(name, sst2_folder, "head"))


def test_missing_text_files_are_config_errors(bert_folder, tmp_path):
    with pytest.raises(ConfigError, match="train.tsv"):
        prepare(tcfg(bert_folder, str(tmp_path), "head"))


def test_sample_level_dp_runs_through_the_encoder(bert_folder, sst2_folder, tmp_path):
    pytest.importorskip("opacus")
    _, s = run_experiment(tcfg(bert_folder, sst2_folder, "lora", fedpeft__dp="sample", fedpeft__dp_target_epsilon=5.0), tmp_path / "dp")
    assert 0 < s["dp_epsilon"] <= 5.0
