"""``featherfl reproduce fedpeft-vision``: an MNIST-pretrained ViT fine-tuned on the UCI digits (tiny fake MNIST here)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from featherfl import cli
from featherfl.config import ConfigError
from featherfl.reproduce import fedpeft_vision as fv
from featherfl.reproduce.runner import cmd_reproduce
from support.mnist import tiny_mnist


def test_mnist_is_brought_to_the_digits_format_like_the_uci_bitmaps():
    x = torch.zeros(3, 1, 28, 28)
    x[0, 0, 4:24, 4:24] = 1.0  # a 20 x 20 blot: scaled to fill the whole 32 x 32 box
    x[1, 0, 4:24, 13:15] = 0.9  # a thin upright stroke: full height, centred, a few pixels wide
    y = fv.to_digits_format(x)  # image 2 has no ink and stays blank
    assert y.shape == (3, 1, 8, 8)
    assert torch.equal(y[0], torch.ones(1, 8, 8)) and torch.equal(y[2], torch.zeros(1, 8, 8))
    stroke = y[1, 0]
    assert (stroke.sum(1) > 0).all()  # every block row has ink: the stroke spans the height
    assert set(torch.nonzero(stroke.sum(0)).flatten().tolist()) <= {3, 4}  # and sits in the middle columns
    assert torch.equal(y * 16, (y * 16).round())  # on-pixel counts of 4 x 4 blocks, / 16
    assert fv.to_digits_format(x, dilate=1)[1].sum() > stroke.sum()  # optional thicker pens
    with pytest.raises(ConfigError, match="28, 28"):
        fv.to_digits_format(torch.ones(2, 1, 8, 8))


def test_learning_rates_are_chosen_on_a_validation_split_of_the_training_images(monkeypatch, tmp_path):
    digits = fv._digits()
    calls = []
    score = {3e-3: 0.5, 1e-2: 0.7, 3e-2: 0.7, 1e-1: 0.3, 1e-3: 0.6, 3e-4: 0.4}  # ties at 0.7: the lower rate wins

    def fake_run(folder, cfg, dataset=None):
        calls.append((Path(folder), cfg, dataset))
        return SimpleNamespace(status="completed", final_accuracy=score[cfg["fedpeft.lr"]])

    monkeypatch.setattr(fv, "_run_one", fake_run)
    backbones = {m: tmp_path / f"{m}.safetensors" for m in fv.METHODS}
    chosen, scores = fv.choose_rates(digits, backbones, tmp_path, fv.SIZES, quiet=True)
    for m in ("head", "bias", "prompt", "random-head"):  # (1e-2, 3e-2, 1e-1): 0.7, 0.7, 0.3
        assert chosen[m] == 1e-2
    assert chosen["adapter"] == 1e-2 and chosen["lora"] == 1e-2  # (3e-3, 1e-2, 3e-2): 0.5, 0.7, 0.7
    assert chosen["full"] == 1e-3 and chosen["scratch"] == 1e-3  # (3e-4, 1e-3, 3e-3): 0.4, 0.6, 0.5
    assert len(calls) == sum(len(g) for g in fv.GRID.values()) and set(scores) == set(fv.METHODS)
    train_rows = {tuple(r.flatten().tolist()) for r in digits.train_x}
    for _, cfg, data in calls:
        tx, ty, vx, vy = data
        assert len(tx) + len(vx) == len(digits.train_x) and abs(len(vx) - fv.VALIDATION * len(digits.train_x)) <= 10
        fit = {tuple(r.flatten().tolist()) for r in tx}
        held = {tuple(r.flatten().tolist()) for r in vx}
        assert fit | held <= train_rows  # every image comes from the training split: the test images are never read
        assert set(vy.tolist()) == set(range(10))
        method = cfg["name"].removeprefix("fedpeft-vision-val-")
        assert cfg["model.pretrained"] == str(backbones[method])
        assert cfg["fedpeft.method"] == fv.UNPRETRAINED.get(method, method)


@pytest.mark.slow
def test_quick_recipe_pretrains_on_mnist_and_fine_tunes_every_method_on_digits(tmp_path):
    tiny_mnist(tmp_path / "data", n=300)
    out = tmp_path / "out"
    cmd_reproduce("fedpeft-vision", quick=True, out=str(out), data_dir=str(tmp_path / "data"), quiet=True)
    payload = json.loads((out / "reproduce.json").read_text())
    rows = {r["setting"]: r for r in payload["rows"]}
    assert set(rows) == {f"{fv.LABELS[m]}, digits" for m in fv.METHODS}
    full = rows["Full fine-tuning, digits"]
    for m in fv.METHODS:
        r = rows[f"{fv.LABELS[m]}, digits"]
        summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
        assert summary["dataset"] == "digits" and summary["status"] == "completed" and r["paper"] is None
        assert ("vit-tiny-random" if m in fv.UNPRETRAINED else "vit-tiny-mnist") in summary["backbone"]
        if m in ("head", "bias", "prompt"):
            assert r["bytes_per_client"] < 0.05 * full["bytes_per_client"]
        assert "validation:" in r["note"]
    assert "MNIST t10k training split (200 images" in full["note"] and "pretraining buys" in full["note"] and "after 1 rounds" in full["note"]
    assert any("ImageNet-21k" in d for d in payload["deviations"])


def test_missing_mnist_is_refused_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    rc = cli.main(["reproduce", "fedpeft-vision", "--quick", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    assert rc == 2 and "fedpeft-vision:" in capsys.readouterr().err and not (tmp_path / "out").exists()
