"""The trained model comes out: ``featherfl export`` / ``load_model`` give the model the run evaluated,
in files plain torch (safetensors) and peft read."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import featherfl
from featherfl.algorithms.training import evaluate_model
from featherfl.cli import main
from featherfl.config import ConfigError
from featherfl.data.sources import load_dataset
from featherfl.export import export_run, load_model

QUICK = {"rounds": 2, "clients": 3, "engine": {"threads": 1}, "log": {"plots": False}}


def _digits():
    from featherfl.schema import build_config

    ds = load_dataset(build_config())
    return ds.test_x, ds.test_y


def _accuracy(model, x, y) -> float:
    return evaluate_model(model, x, y, 256)["accuracy"]


@pytest.fixture(scope="module")
def fedavg_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fedavg") / "run"
    return featherfl.run({**QUICK, "algorithm": "fedavg"}, out=out)


def test_export_reproduces_the_runs_final_accuracy_from_plain_safetensors(fedavg_run, tmp_path):
    assert main(["export", str(fedavg_run.run_dir), "--out", str(tmp_path / "m")]) == 0
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["architecture"]["name"] == "mlp" and meta["input_shape"] == [1, 8, 8] and meta["classes"] == list(range(10))
    assert meta["featherfl_version"] == featherfl.__version__ and meta["config"]["rounds"] == 2 and meta["round"] == 2
    x, y = _digits()
    model = load_model(tmp_path / "m")
    assert not model.training
    assert _accuracy(model, x, y) == pytest.approx(fedavg_run.final_accuracy) == pytest.approx(meta["final_accuracy"])
    # a fresh Python without featherfl reads the same tensors with safetensors alone
    code = f"from safetensors.torch import load_file; sd = load_file({str(tmp_path / 'm' / 'model.safetensors')!r}); print(sorted(sd)); print(sum(float(v.double().sum()) for v in sd.values()))"
    keys, total = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    sd = model.state_dict()
    assert keys == str(sorted(sd))
    assert float(total) == pytest.approx(sum(float(v.double().sum()) for v in sd.values()))


def test_result_load_model_and_run_folder_load_the_same_weights(fedavg_run):
    a, b = fedavg_run.load_model(), featherfl.load_model(fedavg_run.run_dir)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(a(x), b(x))


def test_export_refuses_a_folder_that_holds_something_and_a_non_run(fedavg_run, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds"):
        export_run(fedavg_run.run_dir, tmp_path / "busy")
    assert (tmp_path / "busy" / "x.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="no checkpoint.pt"):
        export_run(tmp_path / "busy", tmp_path / "m")
    with pytest.raises(ConfigError, match="neither a run folder"):
        load_model(tmp_path / "busy")


def test_baffle_exports_the_evaluated_global_model(tmp_path):
    r = featherfl.run({**QUICK, "algorithm": "baffle", "baffle": {"k": 20}}, out=tmp_path / "run")
    export_run(r.run_dir, tmp_path / "m")
    x, y = _digits()
    assert _accuracy(load_model(tmp_path / "m"), x, y) == pytest.approx(r.final_accuracy)


def test_fd_exports_every_devices_model(tmp_path):
    r = featherfl.run({**QUICK, "algorithm": "fd", "fd": {"local_steps": 20}}, out=tmp_path / "run")
    export_run(r.run_dir, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert sorted(meta["devices"]) == ["0", "1", "2"]
    models = load_model(tmp_path / "m")
    x, y = _digits()
    accs = [_accuracy(models[c], x, y) for c in range(3)]
    assert sum(accs) / 3 == pytest.approx(r.final_accuracy)
    one = load_model(tmp_path / "m", device=1)
    assert _accuracy(one, x, y) == pytest.approx(accs[1])
    with pytest.raises(ConfigError, match="devices 0-2"):
        load_model(r.run_dir, device=7)


def test_fedpeft_lora_vit_loads_with_peft_and_gives_the_same_logits(tmp_path):
    peft = pytest.importorskip("peft")
    r = featherfl.run({**QUICK, "algorithm": "fedpeft", "model": {"name": "vit-tiny"}, "fedpeft": {"method": "lora", "lr": 0.05}}, out=tmp_path / "run")
    export_run(r.run_dir, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["target_modules"] == ["qkv"] and cfg["modules_to_save"] == ["head"]
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 16
    ours = load_model(tmp_path / "m")
    wrapped = peft.PeftModel.from_pretrained(load_model(tmp_path / "m", peft_base=True), str(tmp_path / "m")).eval()
    x, y = _digits()
    with torch.no_grad():
        a, b = ours(x[:64]), wrapped(x[:64])
        plain = load_model(tmp_path / "m", peft_base=True)(x[:64])
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, plain, atol=1e-3)  # the adapter changes the function: the comparison can fail
    assert _accuracy(ours, x, y) == pytest.approx(r.final_accuracy)


def test_fedpeft_lora_text_adapter_loads_into_the_hugging_face_encoder(tmp_path):
    pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from peft import PeftModel

    sys.path.insert(0, str(Path(__file__).parent))
    from support.tiny_bert import make_bert_folder

    words = "good bad great awful fine movie film plot boring fun".split()
    bert = make_bert_folder(tmp_path / "bert", words)
    data = tmp_path / "sst2"
    data.mkdir()
    rows = ["sentence\tlabel"] + [f"{'good fun' if i % 2 else 'bad boring'} movie\t{i % 2}" for i in range(40)]
    (data / "train.tsv").write_text("\n".join(rows) + "\n")
    (data / "dev.tsv").write_text("\n".join(rows[:11]) + "\n")
    conf = {**QUICK, "algorithm": "fedpeft", "dataset": "sst2", "partition": {"name": "iid"}, "data": {"dir": str(data), "max_length": 8}, "model": {"pretrained": bert}, "fedpeft": {"method": "lora", "lr": 0.5}}
    r = featherfl.run(conf, out=tmp_path / "run")
    export_run(r.run_dir, tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["query", "value"] and cfg["base_model_name_or_path"] == bert
    ours = load_model(tmp_path / "m")
    ids = torch.tensor([[2, 5, 12, 10, 3], [2, 6, 13, 10, 3]])
    encoder = PeftModel.from_pretrained(transformers.AutoModel.from_pretrained(bert, add_pooling_layer=False), str(tmp_path / "m")).eval()
    plain = transformers.AutoModel.from_pretrained(bert, add_pooling_layer=False).eval()
    with torch.no_grad():
        theirs = encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        mine = ours.encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        base = plain(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert torch.allclose(theirs, mine, atol=1e-5)
    assert not torch.allclose(theirs, base, atol=1e-4)
