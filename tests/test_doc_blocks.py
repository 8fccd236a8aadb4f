"""Every documented block runs as written.

Collects each fenced ``bash``, ``python`` and ``toml`` block of README.md, docs/**/*.md and
examples/**/*.md and runs a page's blocks in order in one fresh folder (a page's later
blocks read what its earlier ones wrote), with ``featherfl``, ``.venv/bin/featherfl``,
``python`` and ``make demo`` meaning this checkout. Runs are shortened at one place:
``FEATHERFL_QUICK`` caps every run's rounds (``featherfl.config.quick_caps``).

Markers, an HTML comment on one of the three lines before a block:

- ``<!-- doc-test: skip REASON -->``: not run (needs a GPU, the network, data or hours);
  every such block is reported as a pytest skip with its reason, so none is skipped silently.
- ``<!-- doc-test: file NAME -->`` (toml): written to NAME in the page's folder for later blocks.
- ``<!-- doc-test: expect LABEL VALUE TOLERANCE -->``: run at full length (no rounds cap); the
  last number after LABEL in its output must be VALUE within TOLERANCE: the figure the page
  quotes. Only for blocks that take seconds.

An unlabeled block that looks like a command fails the test: label it so it runs.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "examples").rglob("*.md")])
QUICK_ROUNDS = "1"
RUN = {"bash", "sh", "python", "toml"}
BLOCK = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
MARK = re.compile(r"<!--\s*doc-test:\s*(?P<kind>skip|file|expect)\b\s*(?P<arg>.*?)\s*-->")
COMMAND = re.compile(r"^\s*(\.venv/bin/)?(featherfl|make|python|pip|flwr|flower-)\b", re.M)


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    body: str
    marks: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    out = []
    for m in BLOCK.finditer(text):
        indent = m.group("indent")
        body = "".join(l[len(indent) :] if l.startswith(indent) else l for l in m.group("body").splitlines(True))
        before = text[: m.start()].rstrip("\n").splitlines()[-3:]
        marks = {k.group("kind"): k.group("arg") for line in before for k in MARK.finditer(line)}
        out.append(Block(page, text[: m.start()].count("\n") + 1, m.group("lang").lower(), body, marks))
    return out


ALL = [b for p in PAGES for b in blocks(p)]
SKIPPED = [b for b in ALL if "skip" in b.marks]


def _shims(folder: Path) -> dict[str, str]:
    """``featherfl``, ``python`` and ``make demo`` as the docs mean them, for this checkout."""
    bin_dir = folder / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    scripts = {
        "featherfl": f'#!/bin/sh\nexec "{sys.executable}" -m featherfl "$@"\n',
        "python": f'#!/bin/sh\nexec "{sys.executable}" "$@"\n',
        # the Makefile's targets once .venv exists (this suite is `make test` itself)
        "make": '#!/bin/sh\ncase "$1" in\n  demo) exec featherfl demo ;;\n  test) echo "make test: this suite" ;;\n  *) echo "make $1: not shimmed by the doc test" >&2; exit 2 ;;\nesac\n',
    }
    for name, text in scripts.items():
        p = bin_dir / name
        p.write_text(text)
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    (folder / "examples").symlink_to(ROOT / "examples")  # the docs run from the clone's root
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["MPLBACKEND"] = "Agg"
    env.pop("PYTHONSTARTUP", None)
    return env


def _run(block: Block, folder: Path, env: dict) -> None:
    env = dict(env)
    if "expect" in block.marks:
        env.pop("FEATHERFL_QUICK", None)
    else:
        env["FEATHERFL_QUICK"] = QUICK_ROUNDS
    if block.lang == "toml":
        data = tomllib.loads(block.body)
        if "file" in block.marks:
            (folder / block.marks["file"]).write_text(block.body)
        if "model" in data or "algorithm" in data or "dataset" in data or "rounds" in data:
            from featherfl.schema import build_config

            build_config(block.body)
        return
    if block.lang == "python":
        script = folder / f"block_{block.line}.py"
        script.write_text(block.body)
        cmd = [sys.executable, script.name]
    else:
        cmd = ["bash", "-e", "-o", "pipefail", "-c", block.body]
    p = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    output = p.stdout + p.stderr
    assert p.returncode == 0, f"{block.where} exited {p.returncode}:\n{block.body}\n--- output (end)\n{output[-3000:]}"
    if "expect" in block.marks:
        _check_figure(block, output)


def _check_figure(block: Block, output: str) -> None:
    """``expect LABEL VALUE TOLERANCE``: the output's number after LABEL is VALUE within TOLERANCE
    (e.g. ``expect accuracy 0.93 0.01`` against ``... accuracy 0.9312 ...``)."""
    m = re.fullmatch(r"(?P<label>.+?)\s+(?P<value>[-\d.]+)\s+(?P<tol>[\d.]+)", block.marks["expect"])
    assert m, f"{block.where}: expect needs LABEL VALUE TOLERANCE, got {block.marks['expect']!r}"
    found = re.findall(re.escape(m.group("label")) + r"\s+([-\d.]+)", output)
    assert found, f"{block.where}: no {m.group('label')!r} figure in the output:\n{output[-2000:]}"
    got, want, tol = float(found[-1]), float(m.group("value")), float(m.group("tol"))
    assert abs(got - want) <= tol, f"{block.where}: {m.group('label')} {got} is not the documented {want} +- {tol}"


RUNNABLE_PAGES = [p for p in PAGES if any(b.lang in RUN and "skip" not in b.marks for b in blocks(p))]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One featherfl cache for every page: the default vit-tiny backbone is pretrained once."""
    return tmp_path_factory.mktemp("featherfl-cache")


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE_PAGES, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE_PAGES])
def test_page_blocks_run_as_written(page, tmp_path, cache):
    env = _shims(tmp_path)
    env["FEATHERFL_CACHE"] = str(cache)
    for block in blocks(page):
        if block.lang in RUN and "skip" not in block.marks:
            _run(block, tmp_path, env)


@pytest.mark.parametrize("block", SKIPPED, ids=[b.where for b in SKIPPED])
def test_marked_block(block):
    """Each block the docs mark as not runnable here, reported with its reason (``pytest -rs`` lists them)."""
    assert block.marks["skip"], f"{block.where}: a skip marker needs a reason"
    pytest.skip(f"{block.where}: {block.marks['skip']}")


def test_every_command_block_is_labeled_so_it_runs():
    unlabeled = [b.where for b in ALL if b.lang in ("", "text", "console") and COMMAND.search(b.body) and "skip" not in b.marks]
    assert not unlabeled, f"label these blocks bash/python/toml (or mark them skip with a reason): {unlabeled}"


def test_markers_sit_on_blocks():
    """A marker not followed by a block within three lines would silently mark nothing."""
    stray = []
    for page in PAGES:
        text = page.read_text()
        count = len(MARK.findall(text))
        if count != sum(len(b.marks) for b in blocks(page)):
            stray.append(str(page.relative_to(ROOT)))
    assert not stray, f"doc-test markers that precede no block: {stray}"


def test_quick_cap_is_one_setting_that_shortens_every_run(monkeypatch):
    from featherfl.config import ConfigError
    from featherfl.schema import build_config

    monkeypatch.setenv("FEATHERFL_QUICK", "3")
    assert build_config(overrides=[("rounds", 50)])["rounds"] == 3
    assert build_config(overrides=[("rounds", 2)])["rounds"] == 2
    assert build_config(overrides=[("faug.enabled", True)])["faug.gan_steps"] == 300
    monkeypatch.setenv("FEATHERFL_QUICK", "x")
    with pytest.raises(ConfigError, match="FEATHERFL_QUICK"):
        build_config()
