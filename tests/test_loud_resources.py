"""Class 4 of the hostile list: settings that size memory are estimated before anything is
allocated and refused in one line naming the estimate and what is available; long client
work is announced and shows progress."""

import pytest

from featherfl import cli
from featherfl.schema import build_config
from featherfl.experiment import prepare


def _one_line(capsys, *sets):
    argv = ["run", "--rounds", "1", "--clients", "2", "--out", "/nonexistent-featherfl-never-written", "--quiet"]
    for s in sets:
        argv += ["--set", s]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["dataset=synthetic", "data.synthetic_samples=1000000000000"], "data.synthetic_samples=1,000,000,000,000 needs about"),
        (["algorithm=fd", "faug.enabled=true", "faug.gen_hidden=[1000000, 1000000]"], "faug.gen_hidden=[1000000, 1000000]"),
    ],
    ids=["synthetic", "faug"],
)
def test_memory_is_estimated_before_allocating(capsys, sets, needle):
    line = _one_line(capsys, *sets)
    assert needle in line and "GiB available" in line


def test_large_baffle_k_is_announced():
    cfg = build_config(overrides=[("algorithm", "baffle"), ("baffle.k", 1_000_000), ("clients", 3), ("engine.threads", 1)])
    warnings = prepare(cfg).ctx.info["warnings"]
    assert any("baffle.k=1,000,000" in w and "forward passes per round" in w for w in warnings)


def test_client_progress_is_reported(tmp_path, cfg_factory):
    from featherfl.experiment import Experiment

    cfg = cfg_factory(clients=3, rounds=1, engine__threads=1, engine__vectorize="off", fedavg__max_steps=1)
    exp = Experiment(prepare(cfg), tmp_path / "p", progress=False)
    seen = []
    exp.engine.on_client = lambda r, done, n: seen.append((r, done, n))
    exp.run()
    assert seen == [(1, 1, 3), (1, 2, 3), (1, 3, 3)]
