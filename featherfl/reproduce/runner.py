"""Run one recipe into a fresh output folder and write its table."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from featherfl.config import ConfigError
from featherfl.reproduce import get_recipe
from featherfl.reproduce.table import write


def cmd_reproduce(name: str, quick: bool = False, out: str | None = None, data_dir: str | None = None, quiet: bool = False) -> str:
    """Validate the name, data folder and output folder before anything runs; return the table."""
    recipe = get_recipe(name)
    data = Path(data_dir or recipe.default_data_dir).expanduser()
    if not data.is_dir():
        raise ConfigError(f"data folder {data} does not exist; pass --data-dir to the folder holding mnist-t10k/, sst2/ and agnews/")
    if recipe.check is not None:
        recipe.check(data)
    folder = Path(out) if out else Path("runs") / f"reproduce-{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    from featherfl.runfolder import check_out_dir

    check_out_dir(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --out {folder} ({e.strerror})") from None
    t0 = time.perf_counter()
    rows = recipe.run(folder, quick=quick, data_dir=data, quiet=quiet)
    return write(folder, recipe, rows, quick, time.perf_counter() - t0)
