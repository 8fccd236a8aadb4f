"""``featherfl reproduce NAME [--quick]``: a paper's headline result on its own protocol.

Each recipe is one module in this package exposing ``RECIPE`` (a :class:`Recipe`).
A recipe runs the paper's protocol (its models, sizes, iterations, partitions and
accuracy definition) on offline data, writes ordinary run folders under ``out``, and
returns the rows of a side-by-side table: the paper's figure, ours, the difference,
our bytes, and every setting that differs from the paper and why (``table.py``).
``--quick`` runs a scaled-down version of the same code path (used by the tests).
"""

from __future__ import annotations

import importlib

from featherfl.config import ConfigError

#: name -> module holding ``RECIPE``; imported only when asked for.
RECIPES: dict[str, str] = {
    "baffle-mnist": "featherfl.reproduce.baffle_mnist",
    "fd-table1": "featherfl.reproduce.fd_table1",
    "fedpeft-sst2": "featherfl.reproduce.fedpeft_text",
    "fedpeft-agnews": "featherfl.reproduce.fedpeft_text",
    "fedpeft-vision": "featherfl.reproduce.fedpeft_vision",
}


def names_help() -> str:
    """Every recipe name, for ``featherfl reproduce --help`` (kept in step with :data:`RECIPES`)."""
    return "one of: " + ", ".join(sorted(RECIPES))


def get_recipe(name: str):
    """The recipe called ``name``; an unknown name is a one-line ConfigError listing the known ones."""
    if name not in RECIPES:
        raise ConfigError(f"unknown reproduction {name!r}; expected one of {', '.join(sorted(RECIPES))}")
    module = importlib.import_module(RECIPES[name])
    recipes = getattr(module, "RECIPES", None) or {module.RECIPE.name: module.RECIPE}
    return recipes[name]
