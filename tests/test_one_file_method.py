"""Adding a method is one file: a FedProx outside the package (``tests/support/fedprox.py``),
named by its dotted path, runs with FAug, simulated attackers and secure aggregation around it,
though it names none of them and nothing in the package names it."""

import json
from pathlib import Path

import pytest

from featherfl import cli

PATH = "support.fedprox:FedProx"
SOURCE = Path(__file__).parent / "support" / "fedprox.py"
GAN = ["--set", "faug.gan_steps=20", "--set", "faug.check_every=0", "--set", "faug.gen_hidden=[32]", "--set", "faug.disc_hidden=[32]", "--set", "faug.noise_dim=8"]


@pytest.fixture
def importable(monkeypatch):
    """``support.fedprox`` importable here and in any worker process this test starts."""
    here = str(Path(__file__).parent)
    monkeypatch.syspath_prepend(here)
    monkeypatch.setenv("PYTHONPATH", here)
    from featherfl.algorithms import registry

    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))  # the plug-in is gone after the test


def _run(out: Path, *extra: str) -> list[dict]:
    argv = ["run", "--algorithm", PATH, "--rounds", "2", "--clients", "5", "--out", str(out), "--quiet", "--set", "engine.threads=1",
            "--set", "fedprox.local_epochs=1", "--set", "log.plots=false", *extra]
    assert cli.main(argv) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_file_names_no_feature_and_the_package_names_no_fedprox():
    text = SOURCE.read_text().lower()
    code = text.split('"""', 2)[2]  # past the module docstring
    for feature in ("faug", "secagg", "attack", "summation", "compress"):
        assert feature not in code
    package = Path(__file__).resolve().parents[1] / "featherfl"
    assert not [p for p in package.rglob("*.py") if "support.fedprox" in p.read_text()]


def test_fedprox_plug_in_with_faug_attackers_and_secure_aggregation(tmp_path, importable):
    faug = ["--set", "partition.name=label-deficient", "--set", "faug.enabled=true", *GAN]
    attack = ["--set", "attack.fraction=0.2", "--set", "attack.kind=sign-flip"]
    secagg = ["--set", "secagg.protocol=secagg+", "--set", "fedprox.weighting=samples"]
    rows = _run(tmp_path / "all", *faug, *attack, *secagg)
    first = rows[0]
    assert first["faug_generated"] > 0 and "up_samples" in first["bytes_by_category"]  # FAug's setup ran
    assert first["secagg_masked_inputs"] == 5 and first["bytes_by_category"]["up_secagg"] > 0
    assert all(r["aggregated"] for r in rows)
    # the attacker acts inside the sum: without it the server reaches another model
    honest = _run(tmp_path / "honest", *faug, *secagg)
    assert abs(honest[0]["update_norm"] - first["update_norm"]) > 1e-3
    # the server's step from the sum is the plain weighted mean's (within fixed-point rounding)
    plain = _run(tmp_path / "plain", *faug, *attack, "--set", "fedprox.weighting=samples")
    assert abs(plain[0]["update_norm"] - first["update_norm"]) < 1e-4 * max(1.0, plain[0]["update_norm"])


def test_the_proximal_term_acts_through_the_plug_in(tmp_path, importable):
    free = _run(tmp_path / "mu0", "--set", "fedprox.mu=0")
    held = _run(tmp_path / "mu1", "--set", "fedprox.mu=1")
    assert held[0]["update_norm"] < 0.9 * free[0]["update_norm"]


@pytest.mark.slow
def test_fedprox_plug_in_on_ray_with_the_features(tmp_path, importable):
    pytest.importorskip("ray")
    features = ["--set", "partition.name=label-deficient", "--set", "faug.enabled=true", *GAN,
                "--set", "attack.fraction=0.2", "--set", "secagg.protocol=secagg+", "--set", "fedprox.weighting=samples", "--set", "engine.vectorize=off"]
    local = _run(tmp_path / "local", *features)
    ray = _run(tmp_path / "ray", *features, "--set", "engine.name=ray", "--set", "engine.num_cpus=2")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(ray) == strip(local)
