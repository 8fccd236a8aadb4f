"""The config reference and the example configs cannot drift from the code."""

from pathlib import Path

import pytest

from featherfl.schema import build_config, reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_current():
    doc = (ROOT / "docs" / "config.md").read_text()
    assert doc.strip() == reference_markdown().strip(), "regenerate with: .venv/bin/featherfl config-doc > docs/config.md"


def fake_idx_folder(root: Path, n: int = 600) -> Path:
    """A stand-in for the MNIST t10k IDX files: same format, random pixels with label-dependent blobs."""
    import gzip
    import struct

    import numpy as np

    rng = np.random.default_rng(0)
    y = (np.arange(n) % 10).astype(np.uint8)
    x = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, 2 * c : 2 * c + 6, 4:24] = 255
    root.mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">BBBBIII", 0, 0, 8, 3, n, 28, 28) + x.tobytes())
    with gzip.open(root / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, n) + y.tobytes())
    return root


EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


#: examples whose one round still takes several seconds (MNIST-sized data, a GAN): slow
HEAVY = {"fd_mnist", "baffle_mnist", "fd_faug_digits"}


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.stem in HEAVY else p for p in EXAMPLES], ids=[p.stem for p in EXAMPLES])
def test_example_config_runs_one_round(path, tmp_path, monkeypatch):
    from featherfl.experiment import run_experiment

    text = path.read_text()
    cfg = build_config(text)
    monkeypatch.setenv("FEATHERFL_CACHE", str(tmp_path / "cache"))
    overrides = [("rounds", 1)]
    if cfg["dataset"] in ("mnist", "fashion-mnist"):
        overrides += [("data.dir", str(fake_idx_folder(tmp_path / "data"))), ("partition.samples_per_client", 0)]
    elif cfg["dataset"] in ("sst2", "agnews"):
        from support.tiny_bert import fake_text_setup

        overrides += fake_text_setup(cfg, tmp_path)
    cfg = build_config(text, overrides=overrides)
    _, summary = run_experiment(cfg, tmp_path / "run")
    assert summary["rounds_completed"] == 1
