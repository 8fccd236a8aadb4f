"""Bad configuration and data: every invalid value of every key is a one-line error with
exit status 2 that names the key; missing or corrupt data files are named in the error."""

import gzip
import io
import struct
import tarfile
import warnings

import pytest

from featherfl.cli import main
from featherfl.config import Field
from featherfl.schema import full_schema

SCHEMA = full_schema()


def invalid_values(f: Field) -> list[str]:
    """TOML literals (as typed after --set KEY=) that the field must refuse."""
    vals = ["[[1, 2], 3]", "{a = 1}"] if not f.type.startswith("list[") else ["{a = 1}", "[[1], 2]"]
    if f.type == "int":
        vals += ["abc", "1.5", "true", "1e400"]
    elif f.type == "float":
        vals += ["abc", "nan", "inf", "-inf", "true"]
    elif f.type == "bool":
        vals += ["maybe", "2", "0.5"]
    elif f.type == "list[int]":
        vals += ["[1.5]", "[true]", '["x"]']
    elif f.type == "list[float]":
        vals += ["[nan]", '["x"]', "[true]"]
    if f.choices:
        vals.append('"not-a-valid-choice"' if f.type == "str" else "999")
    step = 1 if f.type == "int" else 0.5
    if f.min is not None:
        vals.append(repr(f.min if f.min_exclusive else f.min - step))
    if f.max is not None:
        vals.append(repr(f.max + step))
    return vals


def _run(capsys, tmp_path, argv):
    capsys.readouterr()
    code = main(["run", "--quiet", "--out", str(tmp_path / "out")] + argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_schema_walk_covers_every_key():
    assert len(SCHEMA) > 40 and all(invalid_values(f) for f in SCHEMA.values())
    assert {"rounds", "engine.deadline", "attack.kind", "fedavg.aggregation"} <= set(SCHEMA)


@pytest.mark.parametrize("key", sorted(SCHEMA))
def test_every_invalid_value_of_every_key_is_one_line_exit_2(key, capsys, tmp_path):
    for value in invalid_values(SCHEMA[key]):
        code, err = _run(capsys, tmp_path, ["--set", f"{key}={value}"])
        assert code == 2, (key, value, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (key, value, err)
        assert key in err, (key, value, err)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key", sorted(SCHEMA))
def test_invalid_value_in_a_config_file_names_the_key(key, capsys, tmp_path):
    section, _, leaf = key.rpartition(".")
    bad = invalid_values(SCHEMA[key])[0]
    text = (f"[{section}]\n" if section else "") + f"{leaf} = {bad}\n"
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    code, err = _run(capsys, tmp_path, [str(cfg)])
    assert code == 2 and len(err.splitlines()) == 1 and key in err, (key, err)


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--algorithm", "no-such-method"], "algorithm"),
        (["--model", "no-such-model"], "model.name"),
        (["--set", "model.init=/no/such/weights.pt"], "/no/such/weights.pt"),
        (["--set", "model.width=100000"], "model.width"),
        (["--set", "engine.min_replies=50", "--clients", "5"], "engine.min_replies"),
        (["--set", "partition.min_samples=1000"], "partition.min_samples"),
        (["--clients", "5000"], "clients"),
        (["--set", "rounds"], "KEY=VALUE"),
    ],
)
def test_semantically_invalid_values(argv, needle, capsys, tmp_path):
    code, err = _run(capsys, tmp_path, argv)
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


def test_invalid_toml_and_corrupt_init_weights(capsys, tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("rounds = = 3\n[engine\n")
    code, err = _run(capsys, tmp_path, [str(bad)])
    assert code == 2 and len(err.splitlines()) == 1 and "TOML" in err
    junk = tmp_path / "init.pt"
    junk.write_bytes(b"\x80\x04not a checkpoint" * 10)
    with warnings.catch_warnings(record=True) as seen:  # a warning would print as extra lines on the terminal
        warnings.simplefilter("always")
        code, err = _run(capsys, tmp_path, ["--set", f"model.init={junk}"])
    assert code == 2 and len(err.splitlines()) == 1 and str(junk) in err
    assert not [w for w in seen if "featherfl" in str(w.filename) or "torch" in str(w.filename)], [str(w.message) for w in seen]


def _idx(values: bytes, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, 0x08, len(dims)]) + struct.pack(">" + "I" * len(dims), *dims) + values


def _write_mnist(d, images: bytes, labels: bytes):
    d.mkdir(parents=True, exist_ok=True)
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(images)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(labels)


GOOD_X = gzip.compress(_idx(bytes(20 * 28 * 28), (20, 28, 28)))
GOOD_Y = gzip.compress(_idx(bytes(range(10)) * 2, (20,)))


@pytest.mark.parametrize(
    "images,labels,bad_file",
    [
        (GOOD_X[: len(GOOD_X) // 2], GOOD_Y, "t10k-images-idx3-ubyte.gz"),  # truncated download
        (GOOD_X, b"not gzip at all", "t10k-labels-idx1-ubyte.gz"),
        (gzip.compress(b"\x00\x00\x0d\x03" + bytes(40)), GOOD_Y, "t10k-images-idx3-ubyte.gz"),  # float IDX, not bytes
        (gzip.compress(_idx(bytes(100), (20, 28, 28))), GOOD_Y, "t10k-images-idx3-ubyte.gz"),  # header says more
        (gzip.compress(b"\x00\x00\x08"), GOOD_Y, "t10k-images-idx3-ubyte.gz"),
    ],
    ids=["truncated", "labels-not-gzip", "float-idx", "header-says-more", "short-header"],  # the same names in every test process
)
def test_corrupt_mnist_files_are_named(images, labels, bad_file, capsys, tmp_path):
    d = tmp_path / "mnist"
    _write_mnist(d, images, labels)
    code, err = _run(capsys, tmp_path, ["--dataset", "mnist", "--set", f"data.dir={d}"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert str(d / bad_file) in err, err


def test_missing_and_mismatched_mnist_files(capsys, tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    code, err = _run(capsys, tmp_path, ["--dataset", "fashion-mnist", "--set", f"data.dir={d}"])
    assert code == 2 and len(err.splitlines()) == 1 and "t10k-images-idx3-ubyte.gz" in err and str(d) in err
    d = tmp_path / "mismatch"
    _write_mnist(d, GOOD_X, gzip.compress(_idx(bytes(7), (7,))))
    code, err = _run(capsys, tmp_path, ["--dataset", "mnist", "--set", f"data.dir={d}"])
    assert code == 2 and len(err.splitlines()) == 1 and str(d) in err


def _tar_with(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("content", ["garbage", "truncated", "wrong-size-batch", "missing-batches"])
def test_corrupt_cifar_files_are_named(content, capsys, tmp_path):
    d = tmp_path / "cifar"
    d.mkdir()
    tar = d / "cifar-10-binary.tar.gz"
    full = _tar_with("cifar-10-batches-bin/data_batch_1.bin", bytes(3073 * 2))
    if content == "garbage":
        tar.write_bytes(b"\x1f\x8b" + bytes(200))
    elif content == "truncated":
        tar.write_bytes(full[: len(full) // 2])
    elif content == "wrong-size-batch":
        tar.write_bytes(_tar_with("cifar-10-batches-bin/data_batch_1.bin", bytes(3073 * 2 + 5)))
    else:
        tar.write_bytes(full)
    code, err = _run(capsys, tmp_path, ["--dataset", "cifar10", "--model", "cnn", "--set", f"data.dir={d}"])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert str(d) in err, err
