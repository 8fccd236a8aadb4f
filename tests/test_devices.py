"""engine.device: validated on this machine, CPU results unchanged, CUDA checked where present."""

import json

import pytest
import torch

from featherfl import cli
from featherfl.config import ConfigError
from featherfl.schema import build_config
from featherfl.devices import resolve
from featherfl.experiment import prepare

HAS_CUDA = torch.cuda.is_available()
HAS_MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def test_resolve_names_and_refuses_what_is_not_here():
    assert resolve("cpu") == torch.device("cpu")
    expected = "cuda" if HAS_CUDA else ("mps" if HAS_MPS else "cpu")
    assert resolve("auto").type == expected
    for bad in ("gpu", "cuda:x", "CPU", "tpu"):
        with pytest.raises(ConfigError, match="engine.device"):
            resolve(bad)
    if not HAS_CUDA:
        for name in ("cuda", "cuda:0"):
            with pytest.raises(ConfigError, match="no CUDA device"):
                resolve(name)
    else:
        with pytest.raises(ConfigError, match="CUDA device"):
            resolve(f"cuda:{torch.cuda.device_count()}")
    if not HAS_MPS:
        with pytest.raises(ConfigError, match="MPS"):
            resolve("mps")


@pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without CUDA")
def test_a_missing_gpu_is_a_one_line_error_before_any_file(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "--rounds", "1", "--out", str(out), "--set", "engine.device=cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "engine.device" in err and len(err.splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("algorithm", ["fedavg", "fd", "fedsgd"])
def test_auto_on_a_cpu_machine_gives_the_cpu_results(tmp_path, algorithm):
    if HAS_CUDA or HAS_MPS:
        pytest.skip("auto picks an accelerator here")
    rows = {}
    for dev in ("cpu", "auto"):
        out = tmp_path / dev
        argv = ["run", "--algorithm", algorithm, "--rounds", "2", "--clients", "3", "--out", str(out), "--quiet",
                "--set", "engine.threads=1", "--set", f"engine.device={dev}"]
        argv += {"fedavg": ["--set", "fedavg.max_steps=3"], "fd": ["--set", "fd.local_steps=3"], "fedsgd": []}[algorithm]
        assert cli.main(argv) == 0
        rows[dev] = [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert json.loads((out / "summary.json").read_text())["device"] == "cpu"
    assert rows["cpu"] == rows["auto"]


def test_baffle_stays_on_the_cpu_and_says_so(monkeypatch):
    monkeypatch.setattr("featherfl.devices.resolve", lambda name: torch.device("cuda") if name == "cuda" else torch.device("cpu"))
    p = prepare(build_config(overrides=[("algorithm", "baffle"), ("clients", 2), ("baffle.k", 2), ("engine.device", "cuda")]))
    assert p.ctx.device == torch.device("cpu")
    assert next(p.algorithm.make_client().model.parameters()).device.type == "cpu"
    assert any("runs on the cpu" in w for w in p.ctx.info["warnings"])


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("algorithm", ["fedavg", "fd", "fedsgd"])
def test_cuda_matches_cpu_within_float_tolerance(tmp_path, algorithm):
    acc = {}
    for dev in ("cpu", "cuda"):
        out = tmp_path / dev
        argv = ["run", "--algorithm", algorithm, "--rounds", "3", "--clients", "3", "--out", str(out), "--quiet", "--set", "fedavg.max_steps=5", "--set", "fd.local_steps=5", "--set", f"engine.device={dev}"]
        assert cli.main(argv) == 0
        acc[dev] = json.loads((out / "summary.json").read_text())["final_accuracy"]
    assert abs(acc["cpu"] - acc["cuda"]) < 0.03
