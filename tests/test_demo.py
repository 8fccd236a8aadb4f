from featherfl.demo import METHODS, run_demo


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

    up = {m: json.loads((out / m / "summary.json").read_text())["bytes_up"] for m in ("fedavg", "baffle")}
    assert up["baffle"] * 50 < up["fedavg"]


def test_demo_covers_every_method():
    algos = {m.algorithm for m in METHODS}
    assert {"fedavg", "fedsgd", "baffle", "fedpeft", "fd"} <= algos
    assert any(m.settings.get("fd.faug") for m in METHODS)
    assert {m.settings.get("fedpeft.method") for m in METHODS if m.algorithm == "fedpeft"} == {"bias", "lora"}
