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
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from featherfl.config import ConfigError, Config, read_config_file
from featherfl.schema import build_config


@dataclass
class Result:
    """A finished (or failed) run, read back from its run folder."""

    run_dir: Path
    summary: dict
    metrics: list[dict] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.summary.get("status", "completed")

    @property
    def accuracy(self) -> list[float | None]:
        return [m.get("accuracy") for m in self.metrics]

    @property
    def final_accuracy(self) -> float | None:
        return self.summary.get("final_accuracy")

    @property
    def bytes_up(self) -> int:
        return int(self.summary.get("bytes_up", sum(m["bytes_up"] for m in self.metrics)))

    @property
    def bytes_down(self) -> int:
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


def run(
    config: dict | str | Path | Config | None = None,
    out: str | Path | None = None,
    *,
    model: Callable | None = None,
    dataset=None,
    overwrite: bool = False,
    progress: bool = False,
    **overrides: Any,
) -> Result:
    """Run one experiment and return its :class:`Result`.

    ``config`` is a dict (nested sections or dotted keys), a TOML file path, or None (the
    defaults); ``overrides`` are dotted keys with ``__`` for the dot (``fedavg__lr=0.1``).
    ``model`` is a factory ``(input_shape, num_classes) -> nn.Module``; ``dataset`` is
    ``(train_x, train_y, test_x, test_y)`` (tensors or arrays) or a featherfl ``Dataset``.
    A run whose clients failed returns a Result with ``status == "failed"``.
    """
    from featherfl.experiment import Experiment, default_run_dir, prepare
    from featherfl.runfolder import check_out_dir, clear_run_folder

    extra = [(k.replace("__", "."), v) for k, v in overrides.items()]
    if model is not None:
        extra.append(("model.name", _register_model(model)))
    if dataset is not None:
        extra.append(("dataset", _register_dataset(dataset)))
    cfg = _config(config, extra)
    folder = Path(out) if out is not None else default_run_dir(cfg)
    check_out_dir(folder, overwrite=overwrite)
    prepared = prepare(cfg)
    if overwrite:
        clear_run_folder(folder)
    Experiment(prepared, folder, progress=progress).run()
    return load_run(folder)
