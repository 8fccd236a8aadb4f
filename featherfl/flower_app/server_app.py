"""The generic featherfl ServerApp: the algorithm's server half, driving SuperNodes.

``flwr run`` starts it on the SuperLink's side. It builds the featherfl config
from the run config (:data:`featherfl.flower_app.RUN_CONFIG`), runs the same
:class:`featherfl.experiment.Experiment` loop as ``featherfl run`` with the
:class:`~featherfl.engines.flower_engine.FlowerEngine`, and writes the usual run
folder (metrics.jsonl with the byte ledger, summary.json, plots) on that machine.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


def config_from_run_config(run_config: dict):
    """featherfl Config from Flower's run config: config-file, then the named keys, then ``set``."""
    from featherfl.config import ConfigError, parse_set_args
    from featherfl.schema import build_config

    path = str(run_config.get("config-file", "") or "")
    text = None
    if path:
        p = Path(path).expanduser()
        if not p.exists():
            raise ConfigError(f"run config 'config-file': no file at {p}")
        text = p.read_text()
    named = [(k, run_config[k]) for k in ("algorithm", "rounds", "clients", "seed") if k in run_config]
    extra = parse_set_args(shlex.split(str(run_config.get("set", "") or "")))
    return build_config(text, named + extra + [("engine.name", "flower")])


@app.main()
def main(grid: Grid, context: Context) -> None:
    from logging import INFO

    from featherfl.engines.flower_engine import bind
    from featherfl.experiment import default_run_dir, prepare, run_experiment

    rc = dict(context.run_config)
    log(INFO, "featherfl: ServerApp started; reading the config, loading the data and building the model")
    cfg = config_from_run_config(rc)
    prepared = prepare(cfg)
    # a relative out= is relative to the SuperLink's working directory: log where it really is
    out = (Path(str(rc.get("out") or "")) if rc.get("out") else default_run_dir(cfg)).resolve()
    log(INFO, "featherfl: %s on %s, %s rounds, %s clients -> %s", cfg["algorithm"], cfg["dataset"], cfg["rounds"], cfg["clients"], out)
    with bind(grid, node_wait=float(rc.get("node-wait", 60.0)), reply_timeout=float(rc.get("reply-timeout", 300.0))):
        _, summary = run_experiment(cfg, out, prepared=prepared)
    acc = summary.get("final_accuracy")
    mb = (summary["bytes_up"] + summary["bytes_down"]) / 1e6
    log(INFO, "featherfl: %s rounds, accuracy %s, %.3f MB total -> %s", summary["rounds_completed"], acc, mb, out)
    if summary.get("stopped"):
        log(INFO, "featherfl: run stopped: %s", summary["stopped"])
