"""Checks made once at set-up, before a run folder is written.

A user's model is code featherfl has never seen: a wrong output width, a flat output or
no parameters at all would otherwise surface rounds later as a traceback deep in a
client, or worse, as a run that "completes" with accuracy below chance. One forward pass
on one real batch, before anything is written, turns each of these into a one-line
ConfigError naming the model and the fix.
"""

from __future__ import annotations

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


def check_model(ctx, train_x) -> None:
    """Build the configured model once and run one batch of the real data through it.

    Refuses (ConfigError, exit 2) a model without trainable parameters (nothing could be
    learned or sent), a forward pass that raises, and an output that is not one logit per
    class for each row: ``(batch, num_classes)``.
    """
    import torch

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


#: Seconds a back end (MLflow server, Ray cluster) gets to accept a connection at set-up.
CONNECT_TIMEOUT = 5.0


def bound_network_waits() -> None:
    """Bound the waits of the libraries featherfl calls over the network, unless the user set
    them: MLflow's client otherwise retries a refused address for minutes, the hub client
    waits long on a dead network. Each failure then reaches its one-line message in seconds."""
    import os

    for key, value in (
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"),
        ("HF_HUB_ETAG_TIMEOUT", "10"),
        ("HF_HUB_DOWNLOAD_TIMEOUT", "10"),
    ):
        os.environ.setdefault(key, value)


def _host_port(address: str, default_port: int) -> tuple[str, int] | None:
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    return parts.hostname, port or default_port


def _probe(host: str, port: int) -> str | None:
    """None when ``host:port`` accepts a TCP connection within :data:`CONNECT_TIMEOUT`, else why not."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            return None
    except socket.timeout:
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    except OSError as e:
        return e.strerror or e.__class__.__name__


def check_reachable(cfg) -> None:
    """An MLflow server or Ray cluster that cannot be reached is one line (exit 2) within
    seconds, before anything is written, instead of minutes of silent retries or a hang."""
    uri = cfg["log.mlflow_uri"]
    if uri.startswith(("http://", "https://")):
        hp = _host_port(uri, 443 if uri.startswith("https") else 80)
        why = _probe(*hp) if hp else "not a host address"
        if why:
            raise ConfigError(f"config key 'log.mlflow_uri': cannot reach {uri} ({why}); start the tracking server, fix the address, or leave it empty")
    address = cfg["engine.address"]
    if cfg["engine.name"] == "ray" and address and address not in ("auto", "local"):
        hp = _host_port(address, 10001 if address.startswith("ray://") else 6379)
        why = _probe(*hp) if hp else "not a host:port address"
        if why:
            raise ConfigError(f"config key 'engine.address': cannot reach the Ray cluster at {address} ({why}); start it, fix the address, or leave it empty for a local one")


def available_memory() -> int:
    """Bytes of memory this process can still get (available, not merely free), or 0 if unknown."""
    import os

    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def refuse_if_too_big(need: int, what: str) -> None:
    """One line naming the estimate and what is available, before anything is allocated."""
    have = available_memory()
    if have and need > have:
        raise ConfigError(f"{what} needs about {_gib(need)} of memory; this machine has {_gib(have)} available. Lower it")


def synthetic_bytes(samples: int) -> int:
    """The synthetic source holds inputs, noise, centres[y] and the clamped copy at once (1x8x8 float32 each)."""
    return samples * 64 * 4 * 4


def _mlp_parameters(widths: list[int]) -> int:
    return sum(a * b + b for a, b in zip(widths, widths[1:]))


def check_setup_memory(cfg, algorithm_class, input_shape: tuple, num_classes: int) -> None:
    """Settings that size memory, estimated from the config and the data's shape before the
    method allocates them: FAug's generator and discriminator (weights, gradients and two
    Adam moments each), and what the method declares (``Algorithm.memory_needs``)."""
    import math

    features = math.prod(input_shape)
    if cfg.get("faug.enabled"):
        gen = _mlp_parameters([cfg["faug.noise_dim"] + num_classes, *cfg["faug.gen_hidden"], features])
        disc = _mlp_parameters([features + num_classes, *cfg["faug.disc_hidden"], 1])
        refuse_if_too_big((gen + disc) * 4 * 4, f"faug.gen_hidden={cfg['faug.gen_hidden']} with faug.disc_hidden={cfg['faug.disc_hidden']} ({gen + disc:,} parameters)")
    for need, what in algorithm_class.memory_needs(cfg, tuple(input_shape), num_classes):
        refuse_if_too_big(need, what)
