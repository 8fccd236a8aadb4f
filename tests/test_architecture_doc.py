"""docs/architecture.md's worked example is real: its one file plus one registry line make a method
that runs end to end, and its proximal term does what FedProx says (it is not computed and dropped)."""

import json
import re
import sys
from pathlib import Path

from featherfl import algorithms, cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _install(tmp_path, monkeypatch):
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(code) == 1
    (tmp_path / "fedprox_example.py").write_text(code[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("fedprox_example", None)
    monkeypatch.setitem(algorithms.REGISTRY, "fedprox", "fedprox_example:FedProx")


def _run(tmp_path, name, mu):
    out = tmp_path / name
    argv = ["run", "--algorithm", "fedprox", "--rounds", "3", "--clients", "4", "--out", str(out), "--quiet", "--set", "engine.threads=1", "--set", f"fedprox.mu={mu}", "--set", "fedprox.local_epochs=1"]
    assert cli.main(argv) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_worked_example_is_one_file_and_one_registry_line(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch)
    rows = _run(tmp_path, "mu0", 0.0)
    assert rows[-1]["accuracy"] > 0.6  # it learns digits
    prox = _run(tmp_path, "mu1", 1.0)
    # a strong proximal term keeps clients near the global model: smaller server steps
    assert prox[0]["update_norm"] < 0.9 * rows[0]["update_norm"]


def test_the_worked_example_gets_faug_without_a_line_of_faug_code(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch)
    out = tmp_path / "faug"
    argv = ["run", "--algorithm", "fedprox", "--rounds", "1", "--clients", "3", "--out", str(out), "--quiet", "--set", "engine.threads=1",
            "--set", "fedprox.local_epochs=1", "--set", "partition.name=label-deficient", "--set", "faug.enabled=true",
            "--set", "faug.gan_steps=20", "--set", "faug.gen_hidden=[32]", "--set", "faug.disc_hidden=[32]", "--set", "faug.noise_dim=8"]
    assert cli.main(argv) == 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["faug_generated"] > 0 and "up_samples" in row["bytes_by_category"]
    assert "faug" not in (tmp_path / "fedprox_example.py").read_text().lower()
