"""Every bad input is one line on stderr and exit status 2, found before any run folder is written."""

import gzip
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from featherfl import cli


def _idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    arr = np.asarray(arr, dtype=np.uint8)
    raw = bytes([0, 0, 8, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _mnist(root: Path, n_img=40, n_lab=40, shape=(28, 28), labels=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    _idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, size=(n_img, *shape)))
    _idx(root / "t10k-labels-idx1-ubyte.gz", labels if labels is not None else np.arange(n_lab) % 10)
    return root


def _expect_usage_error(capsys, argv, out: Path | None = None, needle: str = "") -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featherfl: "), err
    assert "Traceback" not in err
    assert needle.lower() in lines[0].lower(), lines[0]
    if out is not None:
        assert not out.exists(), "a bad input must not create the run folder"
    return lines[0]


def _run_mnist(tmp_path, capsys, root, needle):
    out = tmp_path / "run"
    _expect_usage_error(capsys, ["run", "--dataset", "mnist", "--set", f"data.dir={root}", "--model", "mlp", "--rounds", "1", "--clients", "2", "--out", str(out), "--quiet"], out, needle)


def _corrupt_gz(root: Path) -> Path:
    p = root / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))
    return root


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda r: _corrupt_gz(_mnist(r)), "corrupt"),
        (lambda r: _mnist(r, labels=np.array([0, 1, 12, 3] * 10)), "labels are >= 10"),
        (lambda r: _mnist(r, shape=(8, 8)), "expected n x 28 x 28"),
        (lambda r: (_mnist(r), _idx(r / "t10k-images-idx3-ubyte.gz", np.zeros(784 * 40))), "expected n x 28 x 28"),
        (lambda r: _mnist(r, n_img=40, n_lab=30), "must match"),
        (lambda r: _mnist(r, n_img=30, n_lab=40), "must match"),
        (lambda r: (_mnist(r), (r / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")), "corrupt"),
        (lambda r: (_mnist(r), _idx(r / "train-images-idx3-ubyte.gz", np.zeros((5, 28, 28)))), "train-labels"),
    ],
    ids=["corrupt-deflate", "label-12", "8x8-images", "1d-images", "more-images", "more-labels", "not-gzip", "half-train-pair"],
)
def test_bad_idx_files(tmp_path, capsys, make, needle):
    root = tmp_path / "mnist"
    root.mkdir()
    make(root)
    _run_mnist(tmp_path, capsys, root, needle)


def test_config_file_not_utf8(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(b"rounds = 2\n# \xff\xfe\n")
    _expect_usage_error(capsys, ["run", str(cfg), "--out", str(tmp_path / "run")], tmp_path / "run", "not UTF-8")


def test_config_file_is_a_folder(tmp_path, capsys):
    _expect_usage_error(capsys, ["run", str(tmp_path), "--out", str(tmp_path / "run")], tmp_path / "run", "not a file")


def test_unknown_key_in_a_section_lists_that_section(capsys):
    line = _expect_usage_error(capsys, ["run", "--set", "fedavg.lrr=1"], None, "fedavg.lr")
    assert "[fedavg]" in line and "partition" not in line


def test_a_huge_value_is_shortened_in_the_error(capsys):
    line = _expect_usage_error(capsys, ["run", "--set", "fedavg.lr=" + "9" * 5000 + "x"], None, "characters")
    assert len(line) < 300


TSV_CASES = {
    "empty": b"",
    "header-only": b"sentence\tlabel\n",
    "not-utf8": b"sentence\tlabel\ngood \xff movie\t1\n",
    "label-minus-1": b"sentence\tlabel\ngood movie\t1\nbad movie\t-1\n",
    "label-7": b"sentence\tlabel\ngood movie\t1\nbad movie\t7\n",
    "three-columns": b"sentence\tlabel\ngood movie\t1\textra\n",
}


@pytest.mark.parametrize("case", sorted(TSV_CASES))
def test_bad_sst2_tsv(tmp_path, capsys, case):
    pytest.importorskip("transformers")
    root = tmp_path / "sst2"
    root.mkdir()
    (root / "train.tsv").write_bytes(TSV_CASES[case])
    (root / "dev.tsv").write_bytes(b"sentence\tlabel\ngood movie\t1\nbad movie\t0\n")
    from featherfl.config import ConfigError
    from featherfl.schema import build_config
    from featherfl.data.text import _sst2_rows

    with pytest.raises(ConfigError) as e:
        _sst2_rows(root, "train")
    assert "\n" not in str(e.value) and "train.tsv" in str(e.value)


def test_bad_agnews_label_name(tmp_path):
    pytest.importorskip("transformers")
    from featherfl.config import ConfigError
    from featherfl.data.text import _agnews_rows

    (tmp_path / "test.tsv").write_text("some text\tWorld\nother text\tWeather\n")
    with pytest.raises(ConfigError, match="row 2"):
        _agnews_rows(tmp_path, "test")


@pytest.fixture()
def a_run(tmp_path):
    out = tmp_path / "good"
    assert cli.main(["run", "--out", str(out), "--rounds", "1", "--clients", "2", "--set", "engine.threads=1", "--set", "fedavg.max_steps=1", "--quiet"]) == 0
    return out


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda d: (d / "metrics.jsonl").write_text('{"round": 1, "bytes_up": \n'), "not valid JSON"),
        (lambda d: (d / "metrics.jsonl").write_text('{"round": "one"}\n'), "not a featherfl metrics row"),
        (lambda d: ((d / "summary.json").unlink(), (d / "summary.json").mkdir()), "not a file"),
        (lambda d: (d / "summary.json").write_text("[1, 2"), "not valid JSON"),
        (lambda d: (d / "summary.json").write_bytes(b"\xff\xfe{}"), "not UTF-8"),
        (lambda d: (d / "clients.json").write_text('{"label_histogram": "x"}'), "clients file"),
    ],
    ids=["metrics-truncated", "metrics-foreign", "summary-dir", "summary-truncated", "summary-not-utf8", "clients-foreign"],
)
def test_report_on_damaged_run_folders(a_run, capsys, damage, needle):
    damage(a_run)
    _expect_usage_error(capsys, ["report", str(a_run)], None, needle)


def test_compare_out_into_a_missing_folder(a_run, tmp_path, capsys):
    target = tmp_path / "missing" / "cmp.png"
    _expect_usage_error(capsys, ["compare", str(a_run), "--out", str(target)], None, "does not exist")
    assert not target.parent.exists()


@pytest.mark.slow  # a text model in a fresh process: seconds
def test_quiet_text_run_prints_only_the_result_line(tmp_path):
    """A text run under --quiet prints featherfl's one result line and nothing from transformers."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    import torch

    words = "good bad great awful movie".split()
    bert = tmp_path / "bert"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(bert)
    conf = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    torch.manual_seed(0)
    transformers.BertForMaskedLM(conf).save_pretrained(bert)  # loading it as a BertModel makes transformers warn
    data = tmp_path / "sst2"
    data.mkdir()
    rows = "sentence\tlabel\n" + "".join(f"{'good great' if i % 2 else 'bad awful'} movie\t{i % 2}\n" for i in range(40))
    (data / "train.tsv").write_text(rows)
    (data / "dev.tsv").write_text(rows)
    argv = [sys.executable, "-m", "featherfl", "run", "--algorithm", "fedpeft", "--dataset", "sst2", "--clients", "2", "--rounds", "1", "--quiet",
            "--set", f"data.dir={data}", "--set", f"model.pretrained={bert}", "--set", "fedpeft.method=lora", "--set", "engine.threads=1", "--set", "partition.name=iid", "--out", str(tmp_path / "run")]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stderr.strip() == ""
    assert len(p.stdout.strip().splitlines()) == 1


def test_demo_and_reproduce_check_their_out_folders_first(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x")
    _expect_usage_error(capsys, ["demo", "--quick", "--quiet", "--out", str(f / "demo")], None, "which is a file")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    _expect_usage_error(capsys, ["demo", "--quick", "--quiet", "--out", str(busy)], None, "already holds")
    data = tmp_path / "data"
    data.mkdir()
    _expect_usage_error(capsys, ["reproduce", "baffle-mnist", "--quick", "--data-dir", str(data), "--out", str(f)], None, "")


def test_pretrain_out_under_a_file(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x")
    _expect_usage_error(capsys, ["pretrain", "--epochs", "1", "--out", str(f / "b.pt")], None, "which is a file")


def test_every_listed_reproduction_imports_and_unknown_names_are_refused(capsys):
    from featherfl.reproduce import RECIPES, get_recipe

    for name in RECIPES:
        assert get_recipe(name).name == name
    _expect_usage_error(capsys, ["reproduce", "no-such-paper"], None, "expected one of")


@pytest.mark.parametrize("damage, needle", [("size", "corrupt"), ("label", "labels >= 10"), ("missing", "missing")])
def test_bad_cifar10_binary_files(tmp_path, capsys, damage, needle):
    folder = tmp_path / "c10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rec = np.zeros((4, 3073), dtype=np.uint8)
    rec[:, 0] = np.arange(4)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for n in names:
        (folder / n).write_bytes(rec.tobytes())
    if damage == "size":
        (folder / "data_batch_3.bin").write_bytes(rec.tobytes()[:-7])
    elif damage == "label":
        bad = rec.copy()
        bad[1, 0] = 12
        (folder / "test_batch.bin").write_bytes(bad.tobytes())
    else:
        (folder / "data_batch_5.bin").unlink()
    out = tmp_path / "run"
    _expect_usage_error(capsys, ["run", "--dataset", "cifar10", "--set", f"data.dir={tmp_path / 'c10'}", "--model", "cnn", "--rounds", "1", "--clients", "2", "--out", str(out)], out, needle)
