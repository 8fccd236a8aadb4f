"""The side-by-side table every reproduction writes: paper, ours, difference, bytes, deviations."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from featherfl.runfolder import atomic_write_text


@dataclass
class Row:
    """One cell of a paper's table next to our measurement of it."""

    setting: str  # e.g. "FD, M=2" or "LoRA, SST-2"
    paper: float | None  # the paper's figure (accuracy as a fraction), None where the paper has none
    ours: float  # our measurement on the same definition
    bytes_per_client: float  # ledger bytes (up + down) per participating client over the run
    run_dir: str = ""  # the run folder the figure comes from
    note: str = ""

    @property
    def difference(self) -> float | None:
        return None if self.paper is None else self.ours - self.paper


@dataclass
class Recipe:
    name: str
    paper: str  # citation: authors, year, table/figure
    protocol: str  # one paragraph: what is run
    run: Callable[..., list[Row]]  # run(out: Path, quick: bool, data_dir: Path, quiet: bool) -> rows
    deviations: list[str] = field(default_factory=list)  # each setting that differs from the paper, and why
    default_data_dir: str = "../shared/data"
    #: check(data_dir): load and validate the data files (ConfigError on anything wrong) before any folder is written.
    check: Callable[[Path], None] | None = None
    #: Settings a user may change with ``reproduce NAME --set KEY=VALUE`` (defaults = the paper's);
    #: ``run`` then receives ``options=`` and the table lists every changed one as a deviation.
    options: dict = field(default_factory=dict)
    #: check_options(options): ConfigError for values the option types allow but the recipe cannot run.
    check_options: Callable[[dict], None] | None = None


def option_deviations(recipe: Recipe, options: dict) -> list[str]:
    """One line per option the user changed from the paper's value."""
    return [f"{k} = {v} (set with --set; the paper's protocol: {recipe.options[k].default})" for k, v in options.items() if v != recipe.options[k].default]


def render(recipe: Recipe, rows: list[Row], quick: bool, seconds: float, options: dict | None = None) -> str:
    """Markdown: the table and the deviations, as written to ``reproduce.md`` in the output folder."""
    lines = [f"# {recipe.name}{' (--quick: scaled down, not comparable to the paper)' if quick else ''}", "", f"Paper: {recipe.paper}", "", recipe.protocol, ""]
    lines += ["| setting | paper | ours | difference | MB per client | run folder |", "|---|---|---|---|---|---|"]
    for r in rows:
        paper = "-" if r.paper is None else f"{r.paper:.4f}"
        diff = "-" if r.difference is None else f"{r.difference:+.4f}"
        lines.append(f"| {r.setting} | {paper} | {r.ours:.4f} | {diff} | {r.bytes_per_client / 1e6:.4f} | {r.run_dir} |")
    notes = [f"- {r.setting}: {r.note}" for r in rows if r.note]
    if notes:
        lines += ["", "Notes:", *notes]
    deviations = option_deviations(recipe, options or {}) + recipe.deviations
    lines += ["", "Settings that differ from the paper:", *([f"- {d}" for d in deviations] or ["- none"])]
    lines += ["", f"Wall time: {seconds:.0f} s."]
    return "\n".join(lines) + "\n"


def write(out: Path, recipe: Recipe, rows: list[Row], quick: bool, seconds: float, options: dict | None = None) -> str:
    text = render(recipe, rows, quick, seconds, options)
    atomic_write_text(out / "reproduce.md", text)
    deviations = option_deviations(recipe, options or {}) + recipe.deviations
    payload = {"name": recipe.name, "quick": quick, "seconds": seconds, "options": options or {}, "rows": [{**asdict(r), "difference": r.difference} for r in rows], "deviations": deviations}
    atomic_write_text(out / "reproduce.json", json.dumps(payload, indent=2) + "\n")
    return text
