"""Your own data in standard formats (ImageFolder, NPZ, CSV) and natural client partitions."""

import json

import numpy as np
import pytest
import torch

from featherfl import cli
from featherfl.config import ConfigError
from featherfl.schema import build_config
from featherfl.data.sources import load_dataset
from featherfl.experiment import prepare


def _cfg(dataset, path, *extra):
    return build_config(overrides=[("dataset", dataset), ("data.dir", str(path)), *extra])


def _image_folder(root, split_test=True, size=6, mode="L"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in (["train", "test"] if split_test else ["train"]):
        for c, name in enumerate(["cat", "dog", "emu"]):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(8 if split == "train" else 3):
                a = rng.integers(0, 40, size=(size, size), dtype=np.uint8)
                a[:, 2 * c : 2 * c + 2] = 250  # a learnable class-dependent stripe
                Image.fromarray(a if mode == "L" else np.stack([a] * 3, axis=2)).save(d / f"{i}.png")
    return root


def test_imagefolder_reads_classes_pixels_and_the_test_folder(tmp_path):
    ds = load_dataset(_cfg("imagefolder", _image_folder(tmp_path / "imgs")))
    assert ds.train_x.shape == (24, 1, 6, 6) and ds.test_x.shape == (9, 1, 6, 6)
    assert ds.num_classes == 3 and ds.train_y.bincount().tolist() == [8, 8, 8]
    assert float(ds.train_x.max()) == pytest.approx(250 / 255) and "cat, dog, emu" in ds.note
    # class c is bright in columns 2c, 2c+1
    for c in range(3):
        assert float(ds.train_x[ds.train_y == c][:, 0, :, 2 * c].mean()) > 0.9


def test_imagefolder_rgb_resize_and_held_out_test(tmp_path):
    root = _image_folder(tmp_path / "rgb", split_test=False, mode="RGB")
    ds = load_dataset(_cfg("imagefolder", root, ("data.image_size", 4), ("data.test_fraction", 0.25)))
    assert ds.train_x.shape[1:] == (3, 4, 4) and len(ds.train_y) == 18 and len(ds.test_y) == 6


def test_imagefolder_bad_input_is_one_line(tmp_path):
    from PIL import Image

    with pytest.raises(ConfigError, match="does not exist; expected a folder with train/"):
        load_dataset(_cfg("imagefolder", tmp_path / "nope"))
    root = _image_folder(tmp_path / "bad")
    (root / "train" / "cat" / "9.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match="9.png is not a readable image"):
        load_dataset(_cfg("imagefolder", root))
    root = _image_folder(tmp_path / "sizes")
    Image.fromarray(np.zeros((7, 7), dtype=np.uint8)).save(root / "train" / "dog" / "big.png")
    with pytest.raises(ConfigError, match="different sizes.*data.image_size"):
        load_dataset(_cfg("imagefolder", root))


def test_npz_with_client_ids_gives_natural_clients(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    writers = np.repeat(np.arange(6), 10)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, client_train=writers, x_test=x[:10], y_test=y[:10])
    p = prepare(_cfg("npz", tmp_path / "d.npz", ("partition.name", "natural"), ("clients", 6), ("model.name", "mlp")))
    assert [len(c) for c in p.client_data] == [10] * 6
    assert all(torch.equal(c.x, torch.from_numpy(x[i * 10 : (i + 1) * 10])) for i, c in enumerate(p.client_data))
    with pytest.raises(ConfigError, match="6 client ids, fewer than clients=7"):
        prepare(_cfg("npz", tmp_path / "d.npz", ("partition.name", "natural"), ("clients", 7)))


def test_npz_refuses_pickles_and_mismatches(tmp_path):
    np.savez(tmp_path / "obj.npz", x_train=np.array([{"a": 1}, {"b": 2}], dtype=object), y_train=np.array([0, 1]))
    with pytest.raises(ConfigError, match="never unpickles|Python objects"):
        load_dataset(_cfg("npz", tmp_path / "obj.npz"))
    np.savez(tmp_path / "len.npz", x_train=np.zeros((5, 2), np.float32), y_train=np.array([0, 1, 0]))
    with pytest.raises(ConfigError, match="y_train.*5 integers"):
        load_dataset(_cfg("npz", tmp_path / "len.npz"))
    np.savez(tmp_path / "miss.npz", x=np.zeros((5, 2)))
    with pytest.raises(ConfigError, match="lacks x_train, y_train"):
        load_dataset(_cfg("npz", tmp_path / "miss.npz"))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="cannot read"):
        load_dataset(_cfg("npz", tmp_path / "junk.npz"))


def _csv(path, rows):
    path.write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


def test_csv_end_to_end_with_a_writer_column(tmp_path, capsys):
    rng = np.random.default_rng(1)
    rows = [["f1", "writer", "f2", "label"]]
    for i in range(120):
        a, b = rng.normal(size=2)
        rows.append([f"{a:.4f}", f"w{i % 4}", f"{b:.4f}", "yes" if a + b > 0 else "no"])
    data = _csv(tmp_path / "train.csv", rows)
    out = tmp_path / "run"
    argv = ["run", "--dataset", "csv", "--clients", "4", "--rounds", "2", "--out", str(out), "--quiet", "--set", f"data.dir={data}",
            "--set", "data.client_column=writer", "--set", "partition.name=natural", "--set", "model.name=mlp", "--set", "engine.threads=1"]
    assert cli.main(argv) == 0
    clients = json.loads((out / "clients.json").read_text())
    # one client per writer: 30 rows each, less what the stratified 20 % test split took
    assert len(clients["samples"]) == 4 and sum(clients["samples"]) == 96 and max(clients["samples"]) <= 30
    assert json.loads((out / "summary.json").read_text())["final_accuracy"] > 0.6


def test_csv_bad_input_is_one_line(tmp_path):
    good = [["x", "label"], [1, "a"], [2, "b"], [3, "a"], [4, "b"], [5, "a"]]
    with pytest.raises(ConfigError, match="no label column 'target'"):
        load_dataset(_cfg("csv", _csv(tmp_path / "a.csv", good), ("data.label_column", "target")))
    bad = [["x", "label"], [1, "a"], ["oops", "b"], [3, "a"]]
    with pytest.raises(ConfigError, match="line 3, column 'x': 'oops' is not a number"):
        load_dataset(_cfg("csv", _csv(tmp_path / "b.csv", bad)))
    ragged = [["x", "label"], [1, "a"], [2]]
    with pytest.raises(ConfigError, match="line 3 has 1 cells"):
        load_dataset(_cfg("csv", _csv(tmp_path / "c.csv", ragged)))
    with pytest.raises(ConfigError, match="no client column 'who'"):
        load_dataset(_cfg("csv", _csv(tmp_path / "d.csv", good), ("data.client_column", "who")))
    with pytest.raises(ConfigError, match="natural needs client ids"):
        prepare(_cfg("csv", _csv(tmp_path / "e.csv", good * 1 + [[6, "b"], [7, "a"], [8, "b"]]), ("partition.name", "natural"), ("clients", 2)))


def test_a_missing_data_folder_exits_2_before_any_file(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "--dataset", "imagefolder", "--out", str(out), "--set", f"data.dir={tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "imagefolder" in err and len(err.splitlines()) == 1 and not out.exists()


def test_torchvision_mnist_raw_folder_with_uncompressed_idx(tmp_path):
    import gzip
    import shutil

    from support.mnist import tiny_mnist

    gz = tiny_mnist(tmp_path / "orig", n=200)
    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in gz.iterdir():
        with gzip.open(f, "rb") as src, open(raw / f.name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    a = load_dataset(_cfg("mnist", gz, ("data.download", False)))
    b = load_dataset(_cfg("mnist", tmp_path / "tv", ("data.download", False)))
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y) and len(b.train_y) == 160
    with pytest.raises(ConfigError, match="torchvision's layout"):
        load_dataset(_cfg("mnist", tmp_path / "orig" / "none", ("data.download", False)))


def test_fashion_mnist_reads_torchvision_fashionmnist_raw(tmp_path):
    import gzip
    import shutil

    from support.mnist import tiny_mnist

    gz = tiny_mnist(tmp_path / "orig", n=100)
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in gz.iterdir():
        with gzip.open(f, "rb") as src, open(raw / f.name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    ds = load_dataset(_cfg("fashion-mnist", tmp_path / "tv", ("data.download", False)))
    assert ds.name == "fashion-mnist" and ds.train_x.shape[1:] == (1, 28, 28) and len(ds.train_y) + len(ds.test_y) == 100
    with pytest.raises(ConfigError, match="FashionMNIST/raw \\(torchvision's layout\\); download the original IDX files there"):
        load_dataset(_cfg("fashion-mnist", tmp_path / "empty", ("data.download", False)))


class _RunsCode:
    """What a hostile pickle does when loaded: here, create a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def test_cifar10_pickle_release_is_refused_and_the_binary_release_read(tmp_path, capsys):
    import pickle

    root = tmp_path / "c10"
    py = root / "cifar-10-batches-py"
    py.mkdir(parents=True)
    marker = tmp_path / "pickle-was-loaded"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (py / name).write_bytes(pickle.dumps(_RunsCode(marker)))
    out = tmp_path / "run"
    assert cli.main(["run", "--dataset", "cifar10", "--model", "cnn", "--out", str(out), "--set", f"data.dir={root}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cifar-10-batches-py is the Python (pickle) release, which featherfl never loads" in err
    assert "cifar-10-binary.tar.gz" in err and str(root) in err
    assert not marker.exists() and not out.exists()
    # the binary release beside it is what is read
    binary = root / "cifar-10-batches-bin"
    binary.mkdir()
    rec = np.zeros((4, 3073), dtype=np.uint8)
    rec[:, 0] = [3, 1, 4, 1]
    rec[:, 1:] = np.arange(3072, dtype=np.int64) % 256
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (binary / name).write_bytes(rec.tobytes())
    ds = load_dataset(_cfg("cifar10", root))
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_y.tolist() == [3, 1, 4, 1] and not marker.exists()
    assert float(ds.train_x[0, 0, 0, 5]) == pytest.approx(5 / 255) and float(ds.train_x[0, 1, 0, 0]) == pytest.approx((1024 % 256) / 255)
