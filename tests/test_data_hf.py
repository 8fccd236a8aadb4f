"""Hugging Face ``datasets`` folders (``save_to_disk``) as ``dataset = "hf"``: images and text,
splits, natural clients, and every refusal as one line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from featherfl import cli
from featherfl.config import ConfigError
from featherfl.schema import build_config
from featherfl.data.sources import is_text, load_dataset
from featherfl.experiment import prepare, run_experiment

datasets = pytest.importorskip("datasets")

WORDS = "good great fine fun happy bad awful boring dull sad movie film".split()
POS, NEG = WORDS[:5], WORDS[5:10]


def _cfg(path, *extra):
    return build_config(overrides=[("dataset", "hf"), ("data.dir", str(path)), *extra])


def _images(n, seed, size=6):
    """Grayscale images of 3 classes; class c has a bright stripe in columns 2c, 2c+1."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for i in range(n):
        c = i % 3
        a = rng.integers(0, 40, size=(size, size), dtype=np.uint8)
        a[:, 2 * c : 2 * c + 2] = 250
        imgs.append(Image.fromarray(a))
        labels.append(c)
    return imgs, labels


@pytest.fixture(scope="module")
def image_dict(tmp_path_factory):
    """A DatasetDict (train with a writer column, test) of ClassLabel-labelled images."""
    root = tmp_path_factory.mktemp("hf-images")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "emu"]), "writer": datasets.Value("string")})
    imgs, labels = _images(90, 0)
    train = datasets.Dataset.from_dict({"image": imgs, "label": labels, "writer": [f"w{i // 30}" for i in range(90)]}, features=feats)
    timgs, tlabels = _images(30, 1)
    test = datasets.Dataset.from_dict({"image": timgs, "label": tlabels, "writer": ["t"] * 30}, features=feats)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(root / "ds"))
    return root / "ds"


def test_images_from_a_dataset_dict_become_vision_tensors(image_dict):
    ds = load_dataset(_cfg(image_dict))
    assert ds.train_x.shape == (90, 1, 6, 6) and ds.test_x.shape == (30, 1, 6, 6) and ds.train_x.dtype == torch.float32
    assert ds.num_classes == 3 and ds.input_shape == (1, 6, 6) and ds.train_y.bincount().tolist() == [30, 30, 30]
    assert float(ds.train_x.max()) == pytest.approx(250 / 255) and "cat, dog, emu" in ds.note and "'test' tests" in ds.note
    for c in range(3):  # the stripe of class c survived decoding, in the right place
        assert float(ds.train_x[ds.train_y == c][:, 0, :, 2 * c].mean()) > 0.9
    assert ds.train_groups is None and not is_text(_cfg(image_dict))
    resized = load_dataset(_cfg(image_dict, ("data.image_size", 4)))
    assert resized.train_x.shape[1:] == (1, 4, 4)


def test_images_run_federated_with_natural_clients(image_dict, tmp_path):
    out = tmp_path / "run"
    argv = ["run", "--dataset", "hf", "--clients", "3", "--rounds", "3", "--out", str(out), "--quiet", "--set", f"data.dir={image_dict}",
            "--set", "data.client_column=writer", "--set", "partition.name=natural", "--set", "model.name=mlp", "--set", "engine.threads=1",
            "--set", "fedavg.lr=0.1"]
    assert cli.main(argv) == 0
    clients = json.loads((out / "clients.json").read_text())
    assert clients["samples"] == [30, 30, 30]  # one client per writer, the test split is the dict's own
    assert clients["label_histogram"][0] == [10, 10, 10]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 3 and summary["final_accuracy"] > 0.8  # the stripes were learned


def test_rgb_images_and_a_plain_dataset_hold_out_a_test_share(tmp_path):
    from PIL import Image

    imgs, labels = _images(40, 2)
    rgb = [Image.merge("RGB", [im, im, im]) for im in imgs]
    datasets.Dataset.from_dict({"picture": rgb, "kind": [["a", "b", "c"][v] for v in labels], "n": list(range(40))}).save_to_disk(str(tmp_path / "d"))
    ds = load_dataset(_cfg(tmp_path / "d", ("data.label_column", "kind"), ("data.test_fraction", 0.25)))
    assert ds.train_x.shape[1:] == (3, 6, 6) and len(ds.train_y) + len(ds.test_y) == 40 and len(ds.test_y) == 10
    assert ds.num_classes == 3 and "25% held out" in ds.note and "'picture'" in ds.note
    assert torch.equal(ds.train_x[:, 0], ds.train_x[:, 2])  # gray pixels copied to every channel


@pytest.fixture(scope="module")
def text_setup(tmp_path_factory):
    pytest.importorskip("transformers")
    from support.tiny_bert import make_bert_folder

    root = tmp_path_factory.mktemp("hf-text")
    bert = make_bert_folder(root / "bert", WORDS)
    g = np.random.default_rng(0)
    rows = {"sentence": [], "label": [], "user": []}
    for i in range(120):
        label = i % 2
        words = [str(g.choice(POS if label else NEG)) for _ in range(1 + i % 4)] + ["movie"]
        rows["sentence"].append(" ".join(words))
        rows["label"].append(label)
        rows["user"].append(i % 3)
    datasets.Dataset.from_dict(rows).save_to_disk(str(root / "text"))
    return bert, root / "text", rows


def _text_cfg(bert, data, *extra):
    base = [("algorithm", "fedpeft"), ("dataset", "hf"), ("data.dir", str(data)), ("model.pretrained", bert), ("clients", 3),
            ("rounds", 2), ("engine.threads", 1), ("data.max_length", 16), ("fedpeft.method", "head"), ("fedpeft.lr", 0.1)]
    return build_config(overrides=base + list(extra))


def test_text_becomes_token_ids_for_the_text_encoder(text_setup):
    from transformers import AutoTokenizer

    bert, data, rows = text_setup
    cfg = _text_cfg(bert, data, ("data.test_fraction", 0.25))
    ds = load_dataset(cfg)
    assert is_text(cfg) and ds.train_x.dtype == torch.int64 and ds.num_classes == 2 and len(ds.test_y) == 30
    tok = AutoTokenizer.from_pretrained(bert)
    first = tok(rows["sentence"][0])["input_ids"]
    assert ds.train_x[0, : len(first)].tolist() == first and set(ds.train_x[0, len(first) :].tolist()) <= {tok.pad_token_id}
    assert ds.input_shape == (ds.train_x.shape[1],) and ds.test_x.shape[1] == ds.train_x.shape[1]


def test_text_runs_fedpeft_on_natural_clients(text_setup, tmp_path):
    bert, data, _ = text_setup
    p = prepare(_text_cfg(bert, data, ("data.client_column", "user"), ("partition.name", "natural")))
    assert type(p.algorithm.model).__name__ == "TextClassifier"
    groups = p.dataset.train_groups
    assert len(groups) == 96 and sum(len(c) for c in p.client_data) == 96  # 120 rows less the stratified 20 % test share
    for i, part in enumerate(p.parts):  # client i holds exactly user i's rows
        assert set(groups[torch.as_tensor(part)].tolist()) == {i} and len(part) == int((groups == i).sum())
    _, s = run_experiment(_text_cfg(bert, data, ("data.client_column", "user"), ("partition.name", "natural")), tmp_path / "run")
    assert s["rounds_completed"] == 2 and s["final_accuracy"] is not None and s["model"] == "hf-encoder"


def test_text_with_a_vision_model_is_refused(text_setup):
    bert, data, _ = text_setup
    cfg = build_config(overrides=[("dataset", "hf"), ("data.dir", str(data)), ("model.pretrained", bert)])
    with pytest.raises(ConfigError, match="holds text.*algorithm = fedpeft"):
        load_dataset(cfg)


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_refusals_are_one_line(tmp_path, image_dict):
    with pytest.raises(ConfigError, match="data.dir .*none does not exist; expected a folder written by datasets' save_to_disk") as e:
        load_dataset(_cfg(tmp_path / "none"))
    _one_line(e)
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="no dataset_dict.json or state.json"):
        load_dataset(_cfg(tmp_path / "plain"))
    with pytest.raises(ConfigError, match="dataset hf needs data.dir"):
        load_dataset(build_config(overrides=[("dataset", "hf")]))
    with pytest.raises(ConfigError, match="no label column 'target' \\(data.label_column\\); columns: image, label, writer") as e:
        load_dataset(_cfg(image_dict, ("data.label_column", "target")))
    _one_line(e)
    with pytest.raises(ConfigError, match="no client column 'who'"):
        load_dataset(_cfg(image_dict, ("data.client_column", "who")))
    with pytest.raises(ConfigError, match="no input column 'pixels'"):
        load_dataset(_cfg(image_dict, ("data.input_column", "pixels")))
    with pytest.raises(ConfigError, match="column 'label' is ClassLabel; expected an Image column or a string \\(text\\) column"):
        load_dataset(_cfg(image_dict, ("data.input_column", "label")))


def test_wrong_feature_types_are_refused(tmp_path):
    imgs, labels = _images(12, 0)
    datasets.Dataset.from_dict({"x": [[1.0, 2.0]] * 12, "label": labels}).save_to_disk(str(tmp_path / "vec"))
    with pytest.raises(ConfigError, match="no Image or string \\(text\\) column besides the label; columns: x \\(List\\)"):
        load_dataset(_cfg(tmp_path / "vec"))
    datasets.Dataset.from_dict({"image": imgs, "label": [0.5] * 12}).save_to_disk(str(tmp_path / "float"))
    with pytest.raises(ConfigError, match="label column 'label' is float64; expected a ClassLabel, integers or strings"):
        load_dataset(_cfg(tmp_path / "float"))
    datasets.Dataset.from_dict({"image": imgs, "label": labels}).save_to_disk(str(tmp_path / "ok"))
    with pytest.raises(ConfigError, match="column 'label' is int64; expected an Image column or a string"):
        load_dataset(_cfg(tmp_path / "ok", ("data.input_column", "label")))
    datasets.Dataset.from_dict({"image": imgs, "caption": ["a b"] * 12, "label": labels}).save_to_disk(str(tmp_path / "captioned"))
    assert load_dataset(_cfg(tmp_path / "captioned")).train_x.dim() == 4  # the string beside an image is metadata
    datasets.Dataset.from_dict({"image": imgs, "mask": imgs, "label": labels}).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(ConfigError, match="several input columns \\(image, mask\\); choose one with data.input_column"):
        load_dataset(_cfg(tmp_path / "two"))
    assert load_dataset(_cfg(tmp_path / "two", ("data.input_column", "mask"))).train_x.dim() == 4
    datasets.Dataset.from_dict({"image": imgs, "label": [-1] + labels[1:]}).save_to_disk(str(tmp_path / "neg"))
    with pytest.raises(ConfigError, match="negative labels"):
        load_dataset(_cfg(tmp_path / "neg"))
    datasets.DatasetDict({"a": datasets.Dataset.from_dict({"image": imgs, "label": labels}), "b": datasets.Dataset.from_dict({"image": imgs, "label": labels})}).save_to_disk(str(tmp_path / "splits"))
    with pytest.raises(ConfigError, match="splits a, b but no 'train' split"):
        load_dataset(_cfg(tmp_path / "splits"))


def test_a_damaged_folder_is_refused_before_any_run_folder(tmp_path, image_dict, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(image_dict, broken)
    (broken / "dataset_dict.json").write_text("{not json")
    out = tmp_path / "run"
    assert cli.main(["run", "--dataset", "hf", "--out", str(out), "--set", f"data.dir={broken}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "load_from_disk cannot read" in err and len(err.splitlines()) == 1 and not out.exists()


def test_without_the_datasets_package_it_names_the_extra(image_dict, tmp_path):
    """A process where ``import datasets`` fails: exit 2 and the pip command, no traceback."""
    code = (
        "import sys; sys.modules['datasets'] = None\n"
        "from featherfl import cli\n"
        f"sys.exit(cli.main(['run', '--dataset', 'hf', '--out', {str(tmp_path / 'run')!r}, '--set', 'data.dir={image_dict}']))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 2, res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "pip install 'featherfl[hf]'" in err and not (tmp_path / "run").exists()


def test_a_validation_split_tests_and_string_labels_must_agree(tmp_path):
    imgs, labels = _images(30, 3)
    names = [["cat", "dog", "emu"][v] for v in labels]
    train = datasets.Dataset.from_dict({"image": imgs, "label": names})
    datasets.DatasetDict({"train": train, "validation": train.select(range(9))}).save_to_disk(str(tmp_path / "val"))
    ds = load_dataset(_cfg(tmp_path / "val"))
    assert "'validation' tests" in ds.note and len(ds.test_y) == 9 and torch.equal(ds.test_y, ds.train_y[:9])
    odd = datasets.Dataset.from_dict({"image": imgs[:3], "label": ["cat", "dog", "yak"]})
    datasets.DatasetDict({"train": train, "test": odd}).save_to_disk(str(tmp_path / "odd"))
    with pytest.raises(ConfigError, match="test split has labels \\['yak'\\] that the training split does not"):
        load_dataset(_cfg(tmp_path / "odd"))


def test_an_unlabelled_test_split_is_passed_over(tmp_path):
    """GLUE's layout: train, validation, and a test split labelled -1 everywhere."""
    imgs, labels = _images(30, 4)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    train = datasets.Dataset.from_dict({"image": imgs, "label": labels}, features=feats)
    hidden = datasets.Dataset.from_dict({"image": imgs[:6], "label": [-1] * 6}, features=feats)
    datasets.DatasetDict({"train": train, "validation": train.select(range(12)), "test": hidden}).save_to_disk(str(tmp_path / "glue"))
    ds = load_dataset(_cfg(tmp_path / "glue"))
    assert len(ds.test_y) == 12 and "'validation' tests, 'test' unlabelled so not used" in ds.note
    datasets.DatasetDict({"train": train, "test": datasets.Dataset.from_dict({"image": imgs[:2], "label": [-1, 0]}, features=feats)}).save_to_disk(str(tmp_path / "half"))
    with pytest.raises(ConfigError, match="rows without a label \\(-1\\)"):
        load_dataset(_cfg(tmp_path / "half"))


def test_own_folders_get_their_own_cached_backbone(tmp_path, image_dict):
    """FedPEFT's default vision backbone is pretrained on the training split: one cache entry per folder."""
    from featherfl.models.pretrain import data_identity, default_backbone_path

    def path(cfg):
        return default_backbone_path(cfg["dataset"], "vit-tiny", 0, data_identity(cfg))

    a, b = _cfg(image_dict), _cfg(tmp_path / "other")
    assert path(a) != path(b) and path(a) == path(_cfg(image_dict)) and path(a) != path(_cfg(image_dict, ("data.image_size", 4)))
    digits = build_config(overrides=[("dataset", "digits"), ("data.dir", str(tmp_path))])
    assert data_identity(digits) == "" and path(digits) == default_backbone_path("digits", "vit-tiny", 0)


def test_undecoded_image_columns_read_the_same(tmp_path, image_dict):
    """Image(decode=False) stores the encoded bytes: they are decoded here, to the same tensors."""
    d = datasets.load_from_disk(str(image_dict))
    d.cast_column("image", datasets.Image(decode=False)).save_to_disk(str(tmp_path / "raw"))
    a, b = load_dataset(_cfg(image_dict)), load_dataset(_cfg(tmp_path / "raw"))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)


def test_an_hf_prefix_says_how_to_name_the_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "--dataset", f"hf:{tmp_path}/mnist", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f'write dataset = "hf" and data.dir = "{tmp_path}/mnist"' in err and not out.exists()
