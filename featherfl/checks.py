"""Checks made once at set-up, before a run folder is written.

A user's model is code featherfl has never seen: a wrong output width, a flat output or
no parameters at all would otherwise surface rounds later as a traceback deep in a
client, or worse, as a run that "completes" with accuracy below chance. One forward pass
on one real batch, before anything is written, turns each of these into a one-line
ConfigError naming the model and the fix.
"""

from __future__ import annotations

import torch

from featherfl.config import ConfigError

#: Rows of the training data the set-up forward pass uses.
CHECK_BATCH = 2


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{e.__class__.__name__}: {text.splitlines()[0][:200]}" if text else e.__class__.__name__


def is_user_model(name: str) -> bool:
    """A model featherfl did not write: a ``module:function`` plug-in or a factory passed to
    ``featherfl.run(model=...)`` (registered as ``python-...``)."""
    return ":" in name or name.startswith("python-")


def check_model(ctx, train_x: torch.Tensor) -> None:
    """Build the configured model once and run one batch of the real data through it.

    Refuses (ConfigError, exit 2) a model without trainable parameters (nothing could be
    learned or sent), a forward pass that raises, and an output that is not one logit per
    class for each row: ``(batch, num_classes)``.
    """
    name = ctx.cfg["model.name"]
    try:
        model = ctx.build_model()
    except ConfigError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        raise ConfigError(f"model {name} could not be built: {_first_line(e)}") from None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise ConfigError(f"model {name} has no trainable parameters; a federated run needs some to train and send")
    batch = train_x[:CHECK_BATCH].to(next(model.parameters()).device)
    model.eval()
    try:
        with torch.no_grad():
            out = model(batch)
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        raise ConfigError(f"model {name} fails on one batch of the data (inputs {tuple(batch.shape)}): {_first_line(e)}") from None
    want = (len(batch), ctx.num_classes)
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"model {name} returns {type(out).__name__}; expected a tensor of class logits shaped (batch, classes) = {want}")
    if tuple(out.shape) != want:
        raise ConfigError(
            f"model {name} returns outputs shaped {tuple(out.shape)} for inputs {tuple(batch.shape)}; expected (batch, classes) = {want}: "
            f"one logit per class (the data has {ctx.num_classes} classes; the factory receives num_classes)"
        )
    if not out.is_floating_point():
        raise ConfigError(f"model {name} returns {out.dtype} outputs; expected floating-point class logits")


_ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1}


def smallest_update_bytes(algorithm) -> int | None:
    """The fewest tensor bytes any reply of the method's training exchange can carry, read from
    its uplink specs (fixed dimensions only); None where the specs cannot be known before round 1."""
    try:
        specs = algorithm.uplink_specs(1, 0)
    except Exception:  # e.g. specs that depend on a set-up exchange not yet made
        return None
    sizes = []
    for spec in specs.values():
        total = 0
        for t in spec.tensors.values():
            n = 1
            for d in t.shape:
                n *= d if d is not None else 0
            total += n * _ITEMSIZE.get(t.dtype, 4)
        sizes.append(total)
    return min(sizes) if sizes else None


def check_payload_cap(cfg, algorithm) -> None:
    """Refuse an ``engine.max_payload_mb`` no reply of this method can fit under: every
    update would be rejected, every round would aggregate nothing."""
    need = smallest_update_bytes(algorithm)
    cap = int(cfg["engine.max_payload_mb"] * 2**20)
    if need is not None and need > cap:
        raise ConfigError(
            f"config key 'engine.max_payload_mb': {cfg['engine.max_payload_mb']:g} MB is below the size of every {cfg['algorithm']} update "
            f"({need / 2**20:.3g} MB of tensors for this model); every reply would be rejected. Set it above {need / 2**20:.3g}"
        )


def failed_round(cfg, metrics: list[dict]) -> str | None:
    """Why the run must stop after a round that aggregated no update, or None.

    A round in which nothing was aggregated (every client dropped, late, rejected, or the
    round skipped by secure aggregation) moved the model by nothing; a run made of such
    rounds would otherwise end "completed" with the initial model's accuracy. Up to
    ``engine.max_failed_rounds`` of them are allowed over the run.
    """
    row = metrics[-1]
    if row.get("aggregated", True):
        return None
    allowed = cfg["engine.max_failed_rounds"]
    failed = sum(1 for m in metrics if not m.get("aggregated", True))
    if failed <= allowed:
        return None
    why = row.get("skipped") or "nothing aggregated"
    parts = [f"{k} {v}" for k, v in {**row.get("dropped_reasons", {}), **row.get("rejected_reasons", {})}.items()]
    detail = f" (clients lost: {', '.join(parts)})" if parts else ""
    return f"{why}{detail}; {failed} round(s) aggregated no update, more than engine.max_failed_rounds={allowed} (raise it to allow some)"
