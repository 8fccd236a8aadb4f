"""Run one recipe into a fresh output folder and write its table."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from featherfl.config import ConfigError
from featherfl.reproduce import get_recipe
from featherfl.reproduce.table import write


def recipe_options(recipe, items: list[str]) -> dict:
    """``--set KEY=VALUE`` items checked against the recipe's options; defaults fill the rest."""
    from featherfl.config import _coerce, brief, parse_set_args

    chosen = {k: f.default for k, f in recipe.options.items()}
    for key, value in parse_set_args(items):
        if key not in recipe.options:
            known = brief(sorted(recipe.options)) if recipe.options else "none"
            raise ConfigError(f"reproduce {recipe.name}: unknown option {key!r}; options: {known}")
        chosen[key] = _coerce(key, recipe.options[key], value)
    if recipe.check_options is not None:
        recipe.check_options(chosen)
    return chosen


def cmd_reproduce(name: str, quick: bool = False, out: str | None = None, data_dir: str | None = None, quiet: bool = False, sets: list[str] | None = None) -> str:
    """Validate the name, options, data folder and output folder before anything runs; return the table."""
    recipe = get_recipe(name)
    options = recipe_options(recipe, sets or [])
    data = Path(data_dir or recipe.default_data_dir).expanduser()
    if not data.is_dir():
        raise ConfigError(f"data folder {data} does not exist; pass --data-dir to the folder holding mnist-t10k/, sst2/ and agnews/")
    if recipe.check is not None:
        recipe.check(data)
    folder = Path(out) if out else Path("runs") / f"reproduce-{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    from featherfl.runfolder import check_out_dir

    check_out_dir(folder, fresh_only=True)  # reproduce has no --resume or --overwrite to suggest
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --out {folder} ({e.strerror})") from None
    t0 = time.perf_counter()
    extra = {"options": options} if recipe.options else {}
    rows = recipe.run(folder, quick=quick, data_dir=data, quiet=quiet, **extra)
    return write(folder, recipe, rows, quick, time.perf_counter() - t0, options)
