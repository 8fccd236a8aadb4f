"""Run-folder files: atomic writes and checksummed checkpoints.

A checkpoint is ``b"FFCK" + sha256(body) + body`` where body is ``torch.save``
output, replaced atomically (temp file, fsync, rename) so a crash at any point
leaves the previous checkpoint intact. Loading verifies the checksum and uses
``weights_only=True``: a checkpoint cannot execute code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

CK_MAGIC = b"FFCK"


class CheckpointError(RuntimeError):
    pass


#: What a run writes into its folder; ``--overwrite`` removes exactly these.
RUN_FILES = ("config.toml", "metrics.jsonl", "summary.json", "clients.json", "clients.npz", "checkpoint.pt", "errors.log")
RUN_DIRS = ("plots",)
#: The client-state files of ``engine.client_state = disk`` (``client_states.<generation>.bin``).
STATE_FILES = re.compile(r"^client_states\.\d+\.bin$")


def check_out_dir(out: Path, resume: bool = False, overwrite: bool = False, flag: str = "--out", fresh_only: bool = False) -> None:
    """Refuse, before anything is written, an ``--out`` that cannot or must not hold this run.

    An empty path (an unset shell variable), a name or path too long for the file system, a
    dangling link or a link loop, a file (or a path under a file), a place where nothing can
    be created (read-only, ``/proc``), a folder that already holds something (unless
    ``--overwrite``, or ``--resume`` of the run it holds), and a ``--resume`` of a folder
    without a checkpoint are all ConfigErrors naming the path and the fix that works.
    ``fresh_only``: the command has neither ``--resume`` nor ``--overwrite`` (``reproduce``),
    so the only fix it may name is another folder.
    """
    from featherfl.config import ConfigError

    if not str(out).strip():
        raise ConfigError(f"{flag} is empty (an unset shell variable?); name the run folder, e.g. {flag} runs/mine")
    try:
        _check_out_path(Path(out), flag)
    except OSError as e:  # whatever the checks themselves meet: one line, never a traceback
        raise ConfigError(f"{flag} {out}: {e.strerror or e}") from None
    out = Path(out)
    ck = out / "checkpoint.pt"
    if resume:
        if ck.exists() and not ck.is_file():
            raise ConfigError(f"--resume: {ck} is not a file (a folder?); move it away, or pass --overwrite without --resume to start the run again")
        if not ck.is_file():
            if (out / "config.toml").is_file():
                raise ConfigError(f"--resume: {out} holds a run that stopped before its first checkpoint, so there is nothing to continue; pass --overwrite (without --resume) to start it again")
            raise ConfigError(f"--resume: {out} holds no checkpoint.pt; there is no run to continue (drop --resume to start one)")
        return
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            if fresh_only:
                raise ConfigError(f"{flag} {out} already holds files; this command writes a fresh folder: choose another {flag}, or remove this one")
            if (out / "config.toml").exists() and not ck.is_file():
                raise ConfigError(f"{flag} {out} holds a run that stopped before its first checkpoint (nothing to resume); pass --overwrite to start it again, or choose another folder")
            held = "a run" if (out / "config.toml").exists() or ck.exists() else "files"
            raise ConfigError(f"{flag} {out} already holds {held}; pass --resume to continue it, --overwrite to replace it, or choose another folder")
        unknown = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES + RUN_DIRS and not p.name.startswith(".") and not STATE_FILES.match(p.name))
        if unknown:
            raise ConfigError(f"--overwrite: {out} holds files that are not a run's ({', '.join(unknown[:3])}{'...' if len(unknown) > 3 else ''}); refusing to delete them")


def _check_out_path(out: Path, flag: str) -> None:
    """The path itself: lengths, links, files in the way, and whether the nearest existing
    folder lets a folder be created in it (probed with a temporary folder, removed at once)."""
    import tempfile

    from featherfl.config import ConfigError

    name_max = os.pathconf("/", "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    path_max = os.pathconf("/", "PC_PATH_MAX") if hasattr(os, "pathconf") else 4096
    long = next((part for part in out.parts if len(os.fsencode(part)) > name_max), None)
    if long:
        raise ConfigError(f"{flag} {out}: the name {long[:40]}... is {len(os.fsencode(long))} bytes, over the file system's limit of {name_max}; choose a shorter name")
    if len(os.fsencode(str(out.absolute()))) >= path_max:
        raise ConfigError(f"{flag}: the path is {len(os.fsencode(str(out.absolute())))} bytes, over the file system's limit of {path_max}; choose a shorter path")
    for parent in [out, *out.parents]:
        if parent.is_symlink() and not parent.exists():
            what = "a link loop" if _loops(parent) else f"a link to {os.readlink(parent)}, which does not exist"
            raise ConfigError(f"{flag} {out}: {parent} is {what}; remove the link or choose another folder")
        if parent.exists() and not parent.is_dir():
            what = "is a file" if parent == out else f"is under {parent}, which is a file"
            raise ConfigError(f"{flag} {out} {what}; choose a folder")
        if parent.exists():
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{flag} {out}: {parent} is not writable")
            if parent != out:
                try:
                    os.rmdir(tempfile.mkdtemp(prefix=".featherfl-probe-", dir=parent))
                except OSError as e:
                    raise ConfigError(f"{flag} {out}: no folder can be created in {parent} ({e.strerror}); choose another place") from None
            break


def _loops(p: Path) -> bool:
    try:
        p.resolve(strict=True)
    except RuntimeError:
        return True
    except OSError as e:
        return e.errno == 40  # ELOOP
    return False


def check_output_file(path: Path, flag: str = "--out") -> None:
    """A file the program will write: its folder must exist (or be creatable under a writable
    folder) and it must not be a folder itself; checked before any work starts."""
    from featherfl.config import ConfigError

    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{flag} {path} is under {parent}, which is a file")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ConfigError(f"{flag} {path}: {parent} is not writable")
            return


def clear_run_folder(out: Path) -> None:
    """Remove a previous run's files (``--overwrite``), after :func:`check_out_dir` allowed it.

    A link among them is removed, never followed: a ``plots`` link to a user's folder
    elsewhere must not have that folder emptied or written into."""
    import shutil

    for name in RUN_FILES:
        (Path(out) / name).unlink(missing_ok=True)
    for p in Path(out).glob("client_states.*.bin"):  # engine.client_state = disk
        p.unlink()
    for name in RUN_DIRS:
        p = Path(out) / name
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.exists():
            shutil.rmtree(p)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file, fsync, rename. When anything
    fails (a full disk), the temporary file is removed and the old ``path`` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    body = buf.getvalue()
    atomic_write_bytes(path, CK_MAGIC + hashlib.sha256(body).digest() + body)


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; cannot resume")
    raw = path.read_bytes()
    if len(raw) < 36 or raw[:4] != CK_MAGIC:
        raise CheckpointError(f"checkpoint {path} is not a featherfl checkpoint or is truncated")
    body = raw[36:]
    if hashlib.sha256(body).digest() != raw[4:36]:
        raise CheckpointError(f"checkpoint {path} is corrupt (checksum mismatch); delete it to start over")
    try:
        with warnings.catch_warnings():  # keep the error a single line
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({e.__class__.__name__})") from None


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def append_jsonl(path: Path, row: dict, line: str | None = None) -> None:
    """Append ``row`` (``line``: its JSON text, when the caller has it) and sync it to disk."""
    with open(path, "a") as f:
        f.write((json.dumps(row) if line is None else line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            rows.append(json.loads(line))
    return rows


def log_crash(out: Path, rnd: int, exc: BaseException) -> str:
    """Record an exception that escaped a round (the model's forward, server-side evaluation,
    aggregation, a plug-in) in ``errors.log`` and return the one-line reason the run failed with.

    A run never ends in a bare traceback: the traceback goes to the file, the summary says
    ``failed`` with this reason, and the command exits 1.
    """
    import traceback

    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    where = f"round {rnd}" if rnd else "set-up"
    try:
        with open(Path(out) / "errors.log", "a") as f:
            f.write(f"--- {where}, server: {exc.__class__.__name__}: {first}\n")
            f.write("".join(traceback.format_exception(exc)).rstrip("\n") + "\n")
    except OSError:
        pass  # the reason still reaches summary.json and the terminal
    return f"{where} raised {exc.__class__.__name__}: {first}" if first else f"{where} raised {exc.__class__.__name__}"


def one_line_failure(exc: BaseException) -> str:
    """The one line a command prints for an exception nothing else handled: a file-system
    error names the path and the system's reason (disk full, read-only, name too long);
    anything else its type and first line. ``FEATHERFL_TRACEBACK=1`` shows the traceback."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot write or read{where}: {exc.strerror} (errno {exc.errno})"
    text = str(exc).strip()
    first = text.splitlines()[0][:300] if text else ""
    return f"failed: {exc.__class__.__name__}{': ' + first if first else ''} (FEATHERFL_TRACEBACK=1 shows where)"
