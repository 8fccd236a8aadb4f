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
