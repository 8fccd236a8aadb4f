"""The one place a run's method and its cross-cutting features are put together.

A feature is a server ``Wrapper`` with a ``wrap_client`` for its device side. ``FEATURES`` lists
them innermost first: FAug's setup around the method, simulated attackers around that (so they
alter the update FAug's data trained), uplink compression around them (attackers alter the update
before it is compressed), secure aggregation outermost (attackers act before masking). ``build_algorithm`` wraps the server in that order, and ``build_client`` wraps one
client the same way without building any server: Ray actors and Flower nodes use it.
"""

from __future__ import annotations

from typing import Callable

import featherfl.attacks as attacks
import featherfl.compress as compress
from featherfl.algorithms.base import Algorithm, ClientHalf, Context, Wrapper
from featherfl.algorithms.registry import get as get_algorithm
from featherfl.config import Config
from featherfl.secagg import enabled as secagg_enabled


def _compress_wrapper(cfg: Config) -> type[Wrapper]:
    compress.check(cfg)
    from featherfl.compress.wrapper import Compress

    return Compress


def _faug_wrapper(cfg: Config) -> type[Wrapper]:
    """FAug's wrapper, imported only when a run asks for it (its GAN is a module of its own)."""
    from featherfl.algorithms.faug import FAug

    return FAug


def _secagg_wrapper(cfg: Config) -> type[Wrapper]:
    """SecAgg's wrapper, imported only when a run asks for it (its cryptography is an extra)."""
    from featherfl.secagg.wrapper import SecAgg

    return SecAgg


#: (on for this config?, the wrapper class for it), innermost first
FEATURES: tuple[tuple[Callable[[Config], bool], Callable[[Config], type[Wrapper]]], ...] = (
    (lambda cfg: cfg["faug.enabled"], _faug_wrapper),
    (attacks.enabled, lambda cfg: attacks.Attacks),
    (compress.enabled, _compress_wrapper),
    (secagg_enabled, _secagg_wrapper),
)


def wrappers(cfg: Config) -> list[type[Wrapper]]:
    """The features this config turns on, innermost first (one-line ConfigError for a combination one refuses)."""
    return [wrapper(cfg) for on, wrapper in FEATURES if on(cfg)]


def build_algorithm(ctx: Context) -> Algorithm:
    """The configured method's server inside its features' wrappers."""
    algorithm = get_algorithm(ctx.cfg["algorithm"])(ctx)
    if ctx.cfg["faug.enabled"]:
        from featherfl.algorithms.faug import check_input

        check_input(ctx.input_shape)
    for wrapper in wrappers(ctx.cfg):
        algorithm = wrapper(algorithm)
    return algorithm


def build_client(ctx: Context) -> ClientHalf:
    """One client half of the configured method inside its features' client wrappers, built
    without any server (the same chain ``build_algorithm(ctx).make_client()`` gives)."""
    method = get_algorithm(ctx.cfg["algorithm"])
    client = method.client_class(ctx)
    for wrapper in wrappers(ctx.cfg):
        client = wrapper.wrap_client(client, method)
    return client
