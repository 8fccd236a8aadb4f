"""The backbone shipped in the package: checked on load, pretrained for real, used by FedPEFT."""

import pytest
import torch

from featherfl.config import ConfigError
from featherfl.models.pretrain import load_backbone
from featherfl.models.shipped import FOLDER, SHIPPED, shipped_path

NAME = "featherfl:vit-tiny-mnist"


def test_the_shipped_file_is_in_the_package_and_matches_its_checksum():
    p = shipped_path(NAME)
    assert p.parent == FOLDER and p.stat().st_size < 4_000_000  # "a few MB at most"


def test_a_damaged_file_is_refused_in_one_line(tmp_path):
    entry = SHIPPED["vit-tiny-mnist"]
    data = bytearray((FOLDER / entry.file).read_bytes())
    data[-1] ^= 1  # one bit of one weight
    (tmp_path / entry.file).write_bytes(bytes(data))
    with pytest.raises(ConfigError) as e:
        shipped_path(NAME, folder=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "SHA-256" in msg and "reinstall" in msg


def test_a_missing_file_and_an_unknown_name_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="lacks"):
        shipped_path(NAME, folder=tmp_path)
    with pytest.raises(ConfigError, match="no shipped backbone 'featherfl:nope'; shipped: featherfl:vit-tiny-mnist"):
        shipped_path("featherfl:nope")


def test_the_wrong_input_size_is_refused():
    with pytest.raises(ConfigError, match=r"expects inputs \(1, 8, 8\)"):
        load_backbone(NAME, 10, (1, 28, 28))


def test_its_features_separate_the_digits_far_better_than_a_random_backbone():
    """Pretrained for real: a nearest-centroid probe on the digits (never seen in pretraining)
    scores 0.90 with the shipped weights and 0.72 with the same ViT at random (measured)."""
    from featherfl.data.sources import load_dataset
    from featherfl.models import build_model
    from featherfl.schema import build_config

    ds = load_dataset(build_config(overrides=[("dataset", "digits")]))
    torch.manual_seed(0)
    shipped, meta = load_backbone(NAME, 10, (1, 8, 8))
    torch.manual_seed(0)
    random = build_model("vit-tiny", (1, 8, 8), 10)

    def probe(net):
        net.eval()
        with torch.no_grad():
            tr, te = net.features(ds.train_x), net.features(ds.test_x)
        centroids = torch.stack([tr[ds.train_y == c].mean(0) for c in range(10)])
        return float((torch.cdist(te, centroids).argmin(1) == ds.test_y).float().mean())

    ours, theirs = probe(shipped), probe(random)
    assert ours >= 0.85 and ours >= theirs + 0.1, (ours, theirs)
    assert "MNIST" in meta["source"] and meta["source_test_accuracy"] > 0.9


def test_fedpeft_runs_on_the_shipped_backbone_and_sends_only_the_head(tmp_path):
    import featherfl

    r = featherfl.run(
        {"algorithm": "fedpeft", "dataset": "digits", "clients": 3, "rounds": 2, "model.pretrained": NAME, "fedpeft.method": "head", "log.plots": False},
        out=tmp_path / "run",
    )
    assert r.status == "completed" and r.final_accuracy > 0.5
    assert r.summary["trainable_parameters"] == 97 * 10  # the head: 96 features x 10 classes + 10 biases
    assert r.summary["backbone"].startswith(NAME)


def test_the_demo_peft_rows_use_the_shipped_backbone():
    from featherfl.demo import METHODS

    peft = [m for m in METHODS if m.algorithm == "fedpeft" or m.settings.get("baffle.peft")]
    assert peft and all(m.settings.get("model.pretrained") == NAME for m in peft)


def test_the_wheel_lists_the_weights_as_package_data():
    import fnmatch
    import tomllib
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    globs = meta["tool"]["setuptools"]["package-data"]["featherfl.models"]
    assert any(fnmatch.fnmatch("weights/" + e.file, g) for e in SHIPPED.values() for g in globs)
