"""featherfl from Python (a notebook, a script): ``featherfl.run`` and ``featherfl.load_run``.

``run`` does what ``featherfl run`` does (the same checks before anything is written, the
same run folder) and returns a :class:`Result` instead of printing. It also takes what a
command line cannot: a model as a plain ``nn.Module`` factory and a dataset as tensors or
arrays. Bad input raises :class:`featherfl.config.ConfigError` with a one-line message.

    import featherfl
    result = featherfl.run({"algorithm": "baffle", "rounds": 5}, out="runs/b")
    result.accuracy          # one entry per round
    result.bytes_up          # ledger bytes, all clients, whole run
    featherfl.load_run("runs/b").final_accuracy
    model = result.load_model()   # the trained torch.nn.Module (featherfl.load_model(path) too)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from featherfl.config import ConfigError, Config, read_config_file
from featherfl.schema import build_config


@dataclass
class Result:
    """A finished (or failed) run, read back from its run folder."""

    #: The run folder (``featherfl report``/``compare``/``export`` take it too).
    run_dir: Path
    #: ``summary.json``: final figures, ``status`` (completed, stopped, failed) and ``reason``.
    summary: dict
    #: ``metrics.jsonl``: one dict per round (``accuracy``, ``loss``, ``bytes_up``, ``bytes_down``, ...);
    #: ``pandas.DataFrame(result.metrics)`` makes a table of it.
    metrics: list[dict] = field(default_factory=list)

    def load_model(self, device: int | None = None):
        """The trained model (``torch.nn.Module`` in ``eval()`` mode; FD: ``{device: model}``),
        rebuilt from the run's checkpoint (see :func:`featherfl.export.load_model`)."""
        from featherfl.export import load_model

        return load_model(self.run_dir, device)

    @property
    def status(self) -> str:
        """``completed``, ``stopped`` (too few replies) or ``failed`` (clients raised): a run that
        did not complete returns normally, so check this."""
        return self.summary.get("status", "completed")

    @property
    def accuracy(self) -> list[float | None]:
        """Test accuracy per round (None for rounds not evaluated, see ``eval.every``)."""
        return [m.get("accuracy") for m in self.metrics]

    @property
    def final_accuracy(self) -> float | None:
        """Accuracy after the last evaluated round (FD: the mean over devices)."""
        return self.summary.get("final_accuracy")

    @property
    def bytes_up(self) -> int:
        """Encoded bytes all clients sent over the whole run (the ledger's figure)."""
        return int(self.summary.get("bytes_up", sum(m["bytes_up"] for m in self.metrics)))

    @property
    def bytes_down(self) -> int:
        """Encoded bytes the server sent to all clients over the whole run."""
        return int(self.summary.get("bytes_down", sum(m["bytes_down"] for m in self.metrics)))


def load_run(path: str | Path) -> Result:
    """A run folder's summary and per-round metrics, validated (ConfigError when damaged)."""
    from featherfl.report import load_run as _load

    summary, metrics = _load(Path(path))
    return Result(Path(path), summary, metrics)


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, key + ".")
        else:
            out.append((key, v))
    return out


def _config(config: dict | str | Path | Config | None, extra: list[tuple[str, Any]]) -> Config:
    if isinstance(config, Config):
        return build_config(overrides=extra, base=config.as_flat())
    if config is None:
        return build_config(overrides=extra)
    if isinstance(config, dict):
        return build_config(overrides=_flatten(config) + extra)
    if isinstance(config, (str, Path)):
        return build_config(read_config_file(Path(config)), extra)
    raise ConfigError(f"config: expected a dict, a TOML file path or None, got {type(config).__name__}")


def _register_model(factory: Callable) -> str:
    """Register an ``nn.Module`` factory ``(input_shape, num_classes) -> nn.Module`` under a stable name."""
    from featherfl.models import _REGISTRY, _load_builtin
    from featherfl.plugins import model_builder

    if not callable(factory):
        raise ConfigError(f"model: expected a callable (input_shape, num_classes) -> nn.Module, got {type(factory).__name__}")
    name = f"python-{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', type(factory).__name__)}"
    _load_builtin()
    _REGISTRY[name] = model_builder(name, factory)
    return name


def _register_dataset(data) -> str:
    """Register (train_x, train_y, test_x, test_y) tensors or arrays, checked, as a data source."""
    from featherfl.data.sources import Dataset, register_source
    from featherfl.plugins import dataset_from_arrays

    ds = dataset_from_arrays(data, "arrays", "arrays passed to featherfl.run")
    digest = hashlib.blake2b(digest_size=6)
    for t in (ds.train_x, ds.train_y, ds.test_x, ds.test_y):
        digest.update(t.contiguous().numpy().tobytes())
    name = f"python-{digest.hexdigest()}"
    register_source(name, lambda cfg: Dataset(ds.name, ds.train_x, ds.train_y, ds.test_x, ds.test_y, ds.num_classes, ds.input_shape, ds.note))
    return name


def complete_message(folder: Path, cfg: Config, rounds_flag: str) -> str | None:
    """One line when the run in ``folder`` already has ``cfg["rounds"]`` rounds (a resume would do
    nothing), naming how to continue it; None when there is something left to run."""
    try:  # the summary's count, written with the last checkpoint: metrics.jsonl may hold a line past it
        summary = json.loads((Path(folder) / "summary.json").read_text())
        status, done = summary.get("status"), int(summary.get("rounds_completed", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if status != "completed" or done < cfg["rounds"]:
        return None
    return f"{folder} is complete at {done} rounds; nothing to do ({rounds_flag} M with M > {done} continues it)"


#: CLI words in the shared error messages, and what a Python caller writes instead.
_PYTHON_WORDS = (("--resume", "resume=True"), ("--overwrite", "overwrite=True"), ("--out", "out="), ("--set ", ""), ("--rounds", "rounds="))


def _python_error(e: ConfigError) -> ConfigError:
    """The same one-line error, naming the Python arguments instead of the CLI flags."""
    msg = str(e)
    for flag, arg in _PYTHON_WORDS:
        msg = msg.replace(flag, arg)
    return ConfigError(msg.replace("out= ", "out=").replace("=True RUN_DIR", "=True with out=RUN_DIR"))


def run(
    config: dict | str | Path | Config | None = None,
    out: str | Path | None = None,
    *,
    model: Callable | None = None,
    dataset=None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    **overrides: Any,
) -> Result:
    """Run one experiment and return its :class:`Result`.

    ``config`` is a dict (nested sections or dotted keys), a TOML file path, or None (the
    defaults); ``overrides`` are dotted keys with ``__`` for the dot (``fedavg__lr=0.1``).
    ``model`` is a factory ``(input_shape, num_classes) -> nn.Module``; ``dataset`` is
    ``(train_x, train_y, test_x, test_y)`` (tensors or arrays) or a featherfl ``Dataset``.
    ``resume=True`` continues the run in ``out`` from its checkpoint (``config`` stays None: the run's
    own config.toml is used; ``rounds=M`` with M larger than the rounds done runs more of them;
    a run already complete is returned as it is, nothing written).

    A run whose clients failed does not raise: it returns a Result with ``status == "failed"``
    (or ``"stopped"``), as the command line exits 1; check ``result.status``.
    """
    try:
        return _run(config, out, model, dataset, overwrite, resume, progress, overrides)
    except ConfigError as e:
        raise _python_error(e) from None


def _run(config, out, model, dataset, overwrite, resume, progress, overrides) -> Result:
    from featherfl.experiment import config_for_resume, default_run_dir, run_experiment
    from featherfl.runfolder import check_out_dir

    extra = [(k.replace("__", "."), v) for k, v in overrides.items()]
    if model is not None:
        extra.append(("model.name", _register_model(model)))
    if dataset is not None:
        extra.append(("dataset", _register_dataset(dataset)))
    if resume:
        if overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; choose one")
        if out is None:
            raise ConfigError("--resume needs --out RUN_DIR")
        if config is not None:
            raise ConfigError("--resume reads the run's own config.toml; pass config=None (change resumable keys as keyword arguments)")
        check_out_dir(Path(out), resume=True)
        cfg = config_for_resume(Path(out), extra)
        if complete_message(Path(out), cfg, "rounds="):
            return load_run(out)
    else:
        cfg = _config(config, extra)
    folder = Path(out) if out is not None else default_run_dir(cfg)
    run_experiment(cfg, folder, resume=resume, overwrite=overwrite, progress=progress)
    return load_run(folder)
