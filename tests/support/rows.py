"""Reading a run folder's metrics.jsonl in tests: every row, or the rows without their timings
(the fields two identical runs may differ in)."""

import json
from pathlib import Path

TIMING = frozenset({"seconds", "wall_seconds"})


def metric_rows(path, drop=TIMING) -> list[dict]:
    """The rows of ``path`` (a metrics.jsonl file or the run folder holding one), without the keys in ``drop``."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in path.read_text().splitlines() if line.strip()]


def all_rows(path) -> list[dict]:
    """Every field of every row of ``path`` (a metrics.jsonl file or its run folder)."""
    return metric_rows(path, drop=())
