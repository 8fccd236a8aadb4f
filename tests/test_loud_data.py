"""Class 3 of the hostile list: data that is not what it seems is refused in one line by
every reader (Python arrays, dataset = module:function, csv, npz, imagefolder), through
one validation path."""

import numpy as np
import pytest

import featherfl
from featherfl import cli
from support.registries import own_registries  # noqa: F401  (fixture)
from featherfl.config import ConfigError


@pytest.fixture(autouse=True)
def _registries(own_registries):
    """Arrays passed to featherfl.run join the source registry; it is restored afterwards."""


def _arrays(y_train=None, y_test=None, x_scale=1.0, n=60):
    rng = np.random.default_rng(0)
    y = np.arange(n) % 3 if y_train is None else y_train
    x = rng.normal(size=(len(y), 4)) * x_scale
    yt = np.arange(12) % 3 if y_test is None else y_test
    return x, y, rng.normal(size=(len(yt), 4)), yt


def _api_error(data):
    with pytest.raises(ConfigError) as e:
        featherfl.run({"rounds": 1, "clients": 2, "partition.name": "iid"}, dataset=data, out=None)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "data, needle",
    [
        (_arrays(x_scale=1e39), "float32-overflowing"),
        (_arrays(y_train=np.zeros(60, dtype=np.int64), y_test=np.zeros(12, dtype=np.int64)), "at least 2"),
        (_arrays(y_test=np.arange(12) % 4), "test labels [3] never appear in training"),
        (_arrays(y_train=np.array(["cat", "dog", "eel"] * 20)), "labels must be integers 0..K-1 or"),
        (_arrays(y_train=np.array([0, 1, 2] * 19 + [10**9])), "class indices 0..K-1"),
    ],
)
def test_python_arrays_are_validated(data, needle):
    assert needle in _api_error(data)


def _npz(tmp_path, **arrays):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    return p


def _cli(tmp_path, capsys, *sets):
    argv = ["run", "--rounds", "1", "--clients", "2", "--out", str(tmp_path / "run"), "--quiet", "--set", "partition.name=iid"]
    for s in sets:
        argv += ["--set", s]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert not (tmp_path / "run").exists()
    return err[0]


def test_npz_single_class_and_unseen_test_labels(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    p = _npz(tmp_path, x_train=x, y_train=np.zeros(40, dtype=np.int64), x_test=x[:5], y_test=np.zeros(5, dtype=np.int64))
    assert "at least 2" in _cli(tmp_path, capsys, "dataset=npz", f"data.dir={p}")
    p = _npz(tmp_path, x_train=x, y_train=np.arange(40) % 2, x_test=x[:5], y_test=np.array([0, 1, 2, 0, 1]))
    assert "never appear in training" in _cli(tmp_path, capsys, "dataset=npz", f"data.dir={p}")


def test_npz_huge_label_is_bounded_before_allocating(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    y = np.arange(40) % 2
    y[0] = 10**9
    p = _npz(tmp_path, x_train=x, y_train=y)
    assert "0..K-1" in _cli(tmp_path, capsys, "dataset=npz", f"data.dir={p}")


def test_npz_string_labels(tmp_path, capsys):
    x = np.zeros((6, 3), dtype=np.float32)
    p = _npz(tmp_path, x_train=x, y_train=np.array(list("ababab")))
    assert "labels must be integers" in _cli(tmp_path, capsys, "dataset=npz", f"data.dir={p}")


def test_csv_overflowing_feature_and_blank_label(tmp_path, capsys):
    rows = ["a,b,label"] + [f"{i % 7},{i % 5},{i % 2}" for i in range(30)]
    (tmp_path / "big.csv").write_text("\n".join(rows + ["1e39,1,0"]) + "\n")
    assert "float32-overflowing" in _cli(tmp_path, capsys, "dataset=csv", f"data.dir={tmp_path / 'big.csv'}")
    (tmp_path / "blank.csv").write_text("\n".join(rows + ["1,1,"]) + "\n")
    assert "label cell ('label') is blank" in _cli(tmp_path, capsys, "dataset=csv", f"data.dir={tmp_path / 'blank.csv'}")


def _images(root, classes, n=4, size=(6, 6)):
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("L", size, color=(i * 40) % 255).save(root / c / f"{i}.png")


def test_imagefolder_empty_class_folder(tmp_path, capsys):
    root = tmp_path / "imgs"
    _images(root, ["a", "b"])
    (root / "c").mkdir()
    err = _cli(tmp_path, capsys, "dataset=imagefolder", f"data.dir={root}")
    assert "holds no images" in err and "/c " in err


def test_imagefolder_decompression_bomb(tmp_path, capsys, monkeypatch):
    from PIL import Image

    root = tmp_path / "imgs"
    _images(root, ["a", "b"], size=(40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # a 40x40 image now counts as a bomb
    assert "decompression bomb" in _cli(tmp_path, capsys, "dataset=imagefolder", f"data.dir={root}")


def test_good_arrays_still_run(tmp_path):
    result = featherfl.run({"rounds": 1, "clients": 2, "partition.name": "iid"}, dataset=_arrays(), out=tmp_path / "ok")
    assert result.summary["status"] == "completed"
