"""Optional experiment trackers: every row of ``metrics.jsonl`` also goes to TensorBoard
and/or MLflow (``[log]`` keys; both off by default; ``pip install 'featherfl[log]'``).

- TensorBoard: event files in ``<run folder>/tensorboard`` (``log.tensorboard = true``);
  view with ``tensorboard --logdir runs``.
- MLflow: ``log.mlflow_uri`` (a tracking server ``http://...`` or a local store
  ``file:/path/mlruns``), experiment ``log.mlflow_experiment``; the run's parameters are the
  resolved config, its metrics every numeric value of every round (step = round), its
  status FINISHED, KILLED (stopped: too few replies) or FAILED. A resumed run continues the
  same MLflow run (its id is kept in ``<run folder>/mlflow_run_id``).

Nested values (``bytes_by_category``) are flattened to ``bytes_by_category/up_weights``;
non-numeric ones (reasons, error lists) stay in ``metrics.jsonl`` only.
"""

from __future__ import annotations

import math
from pathlib import Path

from featherfl.config import ConfigError, Field

LOG_CONFIG: dict[str, Field] = {
    "log.tensorboard": Field("bool", False, "Also write every round's metrics as TensorBoard event files in <run folder>/tensorboard (needs the log extra)."),
    "log.mlflow_uri": Field("str", "", "Also log params and every round's metrics to MLflow at this tracking URI (http://... or file:/path); '' = off (needs the log extra)."),
    "log.mlflow_experiment": Field("str", "featherfl", "MLflow experiment name."),
    "log.plots": Field("bool", True, "Draw the run's two plots (plots/accuracy_vs_round.png, accuracy_vs_mb.png) when it ends: about 1 s more per run on a 2-core machine, mostly importing matplotlib (a 2-round digits run with and without, three alternating pairs: +0.7 to +1.4 s); `featherfl report RUN` draws them later."),
}

MLFLOW_RUN_FILE = "mlflow_run_id"


def numeric_items(row: dict, prefix: str = "") -> dict[str, float]:
    """The row's finite numbers (bools excluded), nested dicts flattened with '/'."""
    out: dict[str, float] = {}
    for k, v in row.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(numeric_items(v, name + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[name] = float(v)
    return out


def check(cfg) -> None:
    """One-line errors before anything runs: an enabled tracker whose package is missing."""
    if cfg["log.tensorboard"]:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise ConfigError("config key 'log.tensorboard': TensorBoard is not installed: pip install 'featherfl[log]'") from None
    if cfg["log.mlflow_uri"]:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError("config key 'log.mlflow_uri': MLflow is not installed: pip install 'featherfl[log]'") from None


class Trackers:
    """The enabled trackers of one run; ``log(row)`` after each round, ``close(status)`` at the end.

    Connecting happens in ``__init__``, before the run writes anything, so an unreachable
    tracking server is a one-line ConfigError; a tracker that fails later never stops the
    run: the failure is printed once and the tracker is switched off (``metrics.jsonl``
    stays the record).
    """

    def __init__(self, cfg, out: Path, resume: bool = False):
        self.tb = None
        self.mlflow = None
        self.run_id = None
        self.out = Path(out)
        self.tb_enabled = bool(cfg["log.tensorboard"])
        uri = cfg["log.mlflow_uri"]
        if not uri:
            return
        import mlflow
        from mlflow.entities import Param

        try:
            self.mlflow = mlflow.MlflowClient(tracking_uri=uri)
            stored = self.out / MLFLOW_RUN_FILE
            if resume and stored.is_file():
                self.run_id = stored.read_text().strip()
                self.mlflow.update_run(self.run_id, status="RUNNING")
            else:
                exp = self.mlflow.get_experiment_by_name(cfg["log.mlflow_experiment"])
                exp_id = exp.experiment_id if exp is not None else self.mlflow.create_experiment(cfg["log.mlflow_experiment"])
                self.run_id = self.mlflow.create_run(exp_id, run_name=cfg["name"] or self.out.name).info.run_id
                params = [Param(k, _param(v)) for k, v in sorted(cfg.as_flat().items())]
                for i in range(0, len(params), 100):  # MLflow's batch limit
                    self.mlflow.log_batch(self.run_id, params=params[i : i + 100])
        except Exception as e:  # unreachable server, bad store, unknown run id: say so before the run starts
            hint = ""
            if not uri.startswith(("http:", "https:", "sqlite:", "postgresql:", "mysql:", "databricks")):
                # MLflow 3 refuses its file store (maintenance mode); a database store works offline
                hint = f"; a local store that works: log.mlflow_uri = \"sqlite:///{self.out.parent.resolve() / 'mlflow.db'}\""
            raise ConfigError(f"config key 'log.mlflow_uri': cannot log to {uri} ({_one_line(e)}){hint}") from None

    def started(self) -> None:
        """Called once the run folder exists: open the event writer, remember the MLflow run."""
        if self.tb_enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.out / "tensorboard"))
        if self.mlflow is not None:
            (self.out / MLFLOW_RUN_FILE).write_text(self.run_id + "\n")

    def log(self, row: dict) -> None:
        if self.tb is None and self.mlflow is None:  # no tracker: nothing to flatten (a cohort of 500's row holds 1,000 per-client counts)
            return
        step = int(row["round"])
        values = {k: v for k, v in numeric_items(row).items() if k != "round"}
        if self.tb is not None:
            try:
                for k, v in values.items():
                    self.tb.add_scalar(k, v, step)
                self.tb.flush()
            except Exception as e:
                self.tb = self._give_up("TensorBoard", e)
        if self.mlflow is not None:
            import time

            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [Metric(_metric_name(k), v, now, step) for k, v in values.items()]
            try:
                for i in range(0, len(metrics), 1000):
                    self.mlflow.log_batch(self.run_id, metrics=metrics[i : i + 1000])
            except Exception as e:
                self.mlflow = self._give_up("MLflow", e)

    def _give_up(self, name: str, e: Exception) -> None:
        import sys

        print(f"featherfl: {name} logging failed and is off for the rest of the run ({_one_line(e)}); metrics.jsonl has every round", file=sys.stderr)
        return None

    def close(self, status: str) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            try:
                self.mlflow.set_terminated(self.run_id, status={"completed": "FINISHED", "stopped": "KILLED"}.get(status, "FAILED"))
            except Exception as e:
                self._give_up("MLflow", e)


def _param(v) -> str:
    text = str(v)
    return text if len(text) <= 500 else text[:497] + "..."


def _metric_name(k: str) -> str:
    # MLflow names allow letters, digits, _ - . space / ; anything else becomes '_'
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in k)


def _one_line(e: Exception, limit: int = 400) -> str:
    """A back end's message on one line and whole up to its first sentences: its lines joined,
    and a cut made at a sentence end where one fits, never mid-word."""
    text = " ".join(str(e).split()) or e.__class__.__name__
    if len(text) <= limit:
        return text
    cut = text.rfind(". ", 0, limit)
    return text[: cut + 1] if cut > limit // 3 else text[: text.rfind(" ", 0, limit)] + " ..."
