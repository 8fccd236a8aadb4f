"""featherfl as a Flower app: one generic ServerApp and ClientApp that run any featherfl algorithm.

``flwr run flower/ <superlink>`` starts it (the ``flower/`` folder holds the app's
``pyproject.toml``; ``python -m featherfl.flower_app new DIR`` writes one anywhere).
The run config keys (``--run-config``) are listed in :data:`RUN_CONFIG`; featherfl
must be installed on the SuperLink and on every SuperNode (``pip install
'featherfl[flower]'``), so the app itself lists no dependencies beyond Flower and
never asks Flower to install torch.
"""

from __future__ import annotations

import json

#: Run config of the Flower app: key -> (default, meaning). ``set`` takes any featherfl
#: config keys, e.g. ``set='partition.alpha=0.1 fedavg.lr=0.05'``.
RUN_CONFIG: dict[str, tuple[object, str]] = {
    "algorithm": ("fedavg", "featherfl algorithm (fedavg, fedsgd, baffle, fd, ...)"),
    "rounds": (10, "federated rounds"),
    "clients": (10, "clients = SuperNodes; each node's num-partitions must equal it"),
    "seed": (0, "seed of every random choice"),
    "config-file": ("", "a featherfl TOML config on the SuperLink machine ('' = defaults)"),
    "set": ("", "more featherfl overrides, space separated KEY=VALUE"),
    "out": ("", "run folder on the SuperLink machine ('' = runs/<algorithm>-<dataset>-<time>)"),
    "node-wait": (60.0, "seconds a round waits for the SuperNodes of its sampled clients"),
    "reply-timeout": (300.0, "seconds a round waits for replies"),
}

PYPROJECT_TEMPLATE = """\
# featherfl as a Flower app. `flwr run <this folder> <superlink-connection>`.
# featherfl (with torch) must already be installed where the SuperLink and the
# SuperNodes run; the app lists only Flower so that Flower never installs torch.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "featherfl-app"
version = "0.1.0"
description = "featherfl algorithms (FedAvg, FedSGD, BAFFLE, FD, ...) over Flower"
license = "Apache-2.0"
dependencies = ["flwr==1.41.0"]

[tool.flwr.app]
publisher = "featherfl"

[tool.flwr.app.components]
serverapp = "featherfl.flower_app.server_app:app"
clientapp = "featherfl.flower_app.client_app:app"

[tool.flwr.app.config]
{config}
"""


def _toml_value(v: object) -> str:
    return json.dumps(v) if isinstance(v, str) else repr(v)  # a JSON string is a TOML basic string


def pyproject_text() -> str:
    """The app's pyproject.toml (the committed ``flower/pyproject.toml`` is this text)."""
    lines = [f"{k} = {_toml_value(v)}  # {meaning}" for k, (v, meaning) in RUN_CONFIG.items()]
    return PYPROJECT_TEMPLATE.format(config="\n".join(lines))
