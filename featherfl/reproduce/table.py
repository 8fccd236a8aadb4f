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


def render(recipe: Recipe, rows: list[Row], quick: bool, seconds: float) -> str:
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
    lines += ["", "Settings that differ from the paper:", *([f"- {d}" for d in recipe.deviations] or ["- none"])]
    lines += ["", f"Wall time: {seconds:.0f} s."]
    return "\n".join(lines) + "\n"


def write(out: Path, recipe: Recipe, rows: list[Row], quick: bool, seconds: float) -> str:
    text = render(recipe, rows, quick, seconds)
    atomic_write_text(out / "reproduce.md", text)
    payload = {"name": recipe.name, "quick": quick, "seconds": seconds, "rows": [{**asdict(r), "difference": r.difference} for r in rows], "deviations": recipe.deviations}
    atomic_write_text(out / "reproduce.json", json.dumps(payload, indent=2) + "\n")
    return text
