"""Optional trackers: every numeric metric of metrics.jsonl in TensorBoard event files and MLflow."""

import json

import pytest

from featherfl import cli
from featherfl.tracking import numeric_items
from support.rows import all_rows

RUN = ["run", "--algorithm", "fedavg", "--rounds", "2", "--clients", "3", "--set", "fedavg.max_steps=2", "--set", "engine.threads=1", "--quiet"]


def test_numeric_items_flatten_and_skip_what_is_not_a_number():
    row = {"round": 3, "accuracy": 0.5, "loss": None, "ok": True, "reasons": {"x": 1}, "bytes_by_category": {"up_weights": 10}, "errors": [1], "nan": float("nan")}
    assert numeric_items(row) == {"round": 3.0, "accuracy": 0.5, "reasons/x": 1.0, "bytes_by_category/up_weights": 10.0}


def test_tensorboard_events_hold_every_round_of_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert cli.main([*RUN, "--out", str(out), "--set", "log.tensorboard=true"]) == 0
    ea = EventAccumulator(str(out / "tensorboard"))
    ea.Reload()
    rows = all_rows(out)
    acc = [(e.step, e.value) for e in ea.Scalars("accuracy")]
    assert acc == [(r["round"], pytest.approx(r["accuracy"])) for r in rows]
    up = [e.value for e in ea.Scalars("bytes_by_category/up_weights")]
    assert up == [r["bytes_by_category"]["up_weights"] for r in rows]


def test_mlflow_gets_params_metrics_and_status_and_a_resume_continues_the_run(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local store, no server: the test stays offline

    store = f"file:{tmp_path / 'mlruns'}"
    out = tmp_path / "ml"
    base = [*RUN[:4], "1", *RUN[5:]]  # 1 round first
    assert cli.main([*base, "--out", str(out), "--set", f"log.mlflow_uri={store}", "--set", "log.mlflow_experiment=exp"]) == 0
    client = mlflow.MlflowClient(tracking_uri=store)
    run_id = (out / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["fedavg.max_steps"] == "2"
    assert client.get_experiment(run.info.experiment_id).name == "exp"
    assert cli.main(["run", "--resume", "--out", str(out), "--rounds", "2", "--quiet"]) == 0
    history = client.get_metric_history(run_id, "accuracy")
    rows = all_rows(out)
    assert sorted((m.step, m.value) for m in history) == [(r["round"], pytest.approx(r["accuracy"])) for r in rows]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1  # the resume did not start a second run


def test_a_tracker_that_is_not_installed_is_a_one_line_error_before_any_file(tmp_path, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *a, **kw):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    out = tmp_path / "x"
    assert cli.main([*RUN, "--out", str(out), "--set", "log.tensorboard=true"]) == 2
    err = capsys.readouterr().err.strip()
    assert "featherfl[log]" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_an_unreachable_mlflow_store_is_a_one_line_error_before_any_file(tmp_path, capsys):
    pytest.importorskip("mlflow")
    out = tmp_path / "x"
    assert cli.main([*RUN, "--out", str(out), "--set", "log.mlflow_uri=nosuchscheme://host/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "log.mlflow_uri" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_tracker_failing_mid_run_never_loses_the_run(tmp_path, capsys, monkeypatch):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    def broken(self, *a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(SummaryWriter, "add_scalar", broken)
    out = tmp_path / "tb"
    assert cli.main([*RUN, "--out", str(out), "--set", "log.tensorboard=true"]) == 0
    assert len(all_rows(out)) == 2 and json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert capsys.readouterr().err.count("TensorBoard logging failed") == 1


def test_plots_are_drawn_unless_log_plots_is_off_and_report_draws_them_later(tmp_path):
    base = ["run", "--rounds", "1", "--clients", "3", "--quiet", "--set", "data.max_train=200", "--set", "data.max_test=100"]
    assert cli.main(base + ["--out", str(tmp_path / "on")]) == 0
    assert sorted(p.name for p in (tmp_path / "on" / "plots").glob("*.png")) == ["accuracy_vs_mb.png", "accuracy_vs_round.png"]
    assert cli.main(base + ["--out", str(tmp_path / "off"), "--set", "log.plots=false"]) == 0
    assert not list((tmp_path / "off").glob("plots/*.png"))
    assert cli.main(["report", str(tmp_path / "off")]) == 0
    assert len(list((tmp_path / "off" / "plots").glob("*.png"))) == 2


def test_back_end_messages_stay_whole_on_one_line():
    """MLflow's refusal of its file store spans several sentences; the one-line error keeps them
    whole (joined, cut only at a sentence end), never mid-sentence."""
    from featherfl.tracking import _one_line

    assert _one_line(ValueError("first line\n  second line")) == "first line second line"
    long = "The store is in maintenance mode. " * 20
    out = _one_line(ValueError(long))
    assert out.endswith("mode.") and len(out) <= 400
    assert _one_line(ValueError("")) == "ValueError"
