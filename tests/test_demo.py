import pytest

from featherfl.demo import METHODS, run_demo


@pytest.mark.slow
def test_demo_table_and_plot(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATHERFL_CACHE", str(tmp_path / "cache"))
    out, text = run_demo(tmp_path / "demo", quick=True, quiet=True, only=["fedavg", "baffle"])
    assert (out / "accuracy_vs_megabytes.png").exists()
    assert (out / "table.md").exists()
    lines = text.splitlines()
    fedavg = next(l for l in lines if l.startswith("fedavg"))
    baffle = next(l for l in lines if l.startswith("baffle"))
    assert "backprop" in fedavg and "forward-only" in baffle
    # BAFFLE's uplink is scalars: far fewer bytes than FedAvg's weights
    import json

    summaries = {m: json.loads((out / m / "summary.json").read_text()) for m in ("fedavg", "baffle")}
    up = {m: s["bytes_up"] for m, s in summaries.items()}
    assert up["baffle"] * 50 < up["fedavg"]
    # the table reports the runs' own figures
    assert f"{summaries['fedavg']['final_accuracy']:.4f}" in fedavg


def test_demo_covers_every_registered_method_with_valid_settings():
    """A new or renamed method must appear in the demo, and every demo entry must be a config that builds."""
    from featherfl import algorithms
    from featherfl.schema import build_config

    assert {m.algorithm for m in METHODS} == set(algorithms.REGISTRY)
    for m in METHODS:
        cfg = build_config(overrides=[("algorithm", m.algorithm), *m.settings.items()])
        assert cfg["algorithm"] == m.algorithm
