"""``featherfl reproduce fd-table1``: the FD paper's Table 1 protocol, run scaled down (--quick)."""

import json


from featherfl import cli
from featherfl.schema import build_config
from featherfl.models import build_model
from support.mnist import tiny_mnist


def test_cnn_fd_is_the_papers_network():
    """Jeong et al. 2018: conv3x3-32, conv3x3-64 unpadded, max-pool, dense-128, dense-10: 1,199,648 weights."""
    m = build_model("cnn-fd", (1, 28, 28), 10)
    weights = sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight"))
    assert weights == 1_199_648
    assert sum(p.numel() for p in m.parameters()) == 1_199_882  # with biases
    padded = build_model("cnn", (1, 28, 28), 10)
    assert sum(p.numel() for p in padded.parameters()) == 1_625_866  # featherfl's padded variant differs


def test_fd_table1_quick_runs_all_four_methods_and_counts_bits(tmp_path):
    tiny_mnist(tmp_path / "data", n=400)
    out = tmp_path / "out"
    rc = cli.main(["reproduce", "fd-table1", "--quick", "--data-dir", str(tmp_path / "data"), "--out", str(out), "--quiet"])
    assert rc == 0
    table = json.loads((out / "reproduce.json").read_text())
    rows = {r["setting"]: r for r in table["rows"]}
    assert set(rows) == {"FD, M=2", "FD+FAug, M=2", "FL, M=2", "FL+FAug, M=2"}
    assert rows["FD, M=2"]["paper"] == 0.7230 and rows["FL+FAug, M=2"]["paper"] == 0.9111
    for r in rows.values():
        cfg = build_config((out / r["run_dir"].split("/")[-1] / "config.toml").read_text())
        assert (cfg["model.name"], cfg["partition.name"], cfg["fd.batch_size"], cfg["fedavg.batch_size"]) == ("cnn-fd", "label-deficient", 64, 64)
        assert cfg["fd.local_steps"] == cfg["fedavg.max_steps"]  # the same local work for both families
        metrics = [json.loads(line) for line in (out / r["run_dir"].split("/")[-1] / "metrics.jsonl").read_text().splitlines()]
        assert r["bytes_per_client"] == sum(m["bytes_up"] + m["bytes_down"] for m in metrics) / 2
        assert r["ours"] == metrics[-1]["accuracy"]
    # FD sends per-label vectors only: orders of magnitude below FL's weights, and FAug adds the generator once
    assert rows["FD, M=2"]["bytes_per_client"] * 1000 < rows["FL, M=2"]["bytes_per_client"]
    assert rows["FD+FAug, M=2"]["bytes_per_client"] > rows["FD, M=2"]["bytes_per_client"]
    text = (out / "reproduce.md").read_text()
    assert "| FD+FAug, M=2 | 0.8464 |" in text and "partition.overlap" in text


def test_fd_table1_options_are_checked_and_listed_as_deviations(tmp_path, capsys):
    tiny_mnist(tmp_path / "data", n=400)
    rc = cli.main(["reproduce", "fd-table1", "--quick", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "bad"), "--set", "no_such=1"])
    assert rc == 2 and "unknown option 'no_such'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    rc = cli.main(["reproduce", "fd-table1", "--quick", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "bad2"), "--set", "local_steps=0"])
    assert rc == 2 and not (tmp_path / "bad2").exists()
    for bad in ("devices=[1]", "methods=['FedProx']"):
        rc = cli.main(["reproduce", "fd-table1", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "bad3"), "--set", bad])
        assert rc == 2 and "fd-table1" in capsys.readouterr().err and not (tmp_path / "bad3").exists()
    out = tmp_path / "one"
    rc = cli.main(["reproduce", "fd-table1", "--quick", "--data-dir", str(tmp_path / "data"), "--out", str(out), "--quiet", "--set", "methods=['FD']"])
    assert rc == 0
    table = json.loads((out / "reproduce.json").read_text())
    assert [r["setting"] for r in table["rows"]] == ["FD, M=2"]
    assert any(d.startswith("methods = ['FD']") for d in table["deviations"])


def test_fd_table1_refuses_missing_data_before_writing(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    rc = cli.main(["reproduce", "fd-table1", "--quick", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    assert rc == 2 and "fd-table1:" in capsys.readouterr().err and not (tmp_path / "out").exists()
