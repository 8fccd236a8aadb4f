"""A whole Flower federation on this machine: a SuperLink, N SuperNodes, ``flwr run``.

For the loopback integration test, the engines benchmark and trying a deployment
on one machine. Every process is started in its own session and stopped by its
id (its process group: the SuperLink's ServerApp and the SuperNodes' ClientApp
children go with it), and on Linux each also receives SIGTERM if the process that
started it dies without cleaning up; Flower's own files (``FLWR_HOME``) live under
``workdir``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from featherfl.flower_app import RUN_CONFIG, pyproject_text


def _die_with_parent() -> None:
    """Linux: SIGTERM this child when the process that started it dies, even by SIGKILL (no orphans)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flower_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env.update(
        FLWR_HOME=str(workdir / "flwr-home"),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.2",  # start ServerApp/ClientApp processes sooner (default 1 s)
        RAY_USAGE_STATS_ENABLED="0",
        PATH=bindir + os.pathsep + env.get("PATH", ""),
    )
    return env


def _toml(v) -> str:
    return json.dumps(v) if isinstance(v, str) else repr(v).lower() if isinstance(v, bool) else repr(v)


class LocalFederation:
    """``with LocalFederation(tmp, nodes=2) as fed: fed.run({...})``; ``nodes=0, simulation=True`` for Flower's simulation runtime."""

    def __init__(self, workdir: Path, nodes: int = 2, partitions: int | None = None, simulation: bool = False, app_source: Path | None = None):
        self.workdir = Path(workdir)
        self.nodes = nodes
        self.partitions = partitions if partitions is not None else nodes
        self.simulation = simulation
        self.env = flower_env(self.workdir)
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.port = free_port()
        self.app_dir = self.workdir / "app"
        self.app_source = Path(app_source) if app_source else None  # another Flower app folder (copied), e.g. a baseline
        self.run_ids: dict[Path, int | str] = {}

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = self.workdir / f"{name}.log"
        self.logs.append(log)
        with open(log, "wb") as fh:
            p = subprocess.Popen(
                argv, cwd=self.workdir, env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent
            )
        self.procs.append(p)
        return p

    def start(self) -> "LocalFederation":
        self.workdir.mkdir(parents=True, exist_ok=True)
        home = Path(self.env["FLWR_HOME"])
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "featherfl-local"\n\n[superlink.featherfl-local]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        if self.app_source:
            shutil.copytree(self.app_source, self.app_dir, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        else:
            self.app_dir.mkdir(exist_ok=True)
            (self.app_dir / "pyproject.toml").write_text(pyproject_text())
        argv = ["flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(self.port), "--disable-runtime-dependency-installation"]
        if self.simulation:
            argv.append("--simulation")
        self._spawn("superlink", argv)
        self._wait_port(self.port, 60)
        for i in range(self.nodes):
            self._spawn(
                f"supernode-{i}",
                [
                    "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.port}", "--port", str(free_port()),
                    "--node-config", f"partition-id={i} num-partitions={self.partitions}",
                ],
            )
        return self

    def _wait_port(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a Flower process exited early:\n{self.tail()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"SuperLink did not open port {port} in {timeout}s:\n{self.tail()}")

    def submit(self, run_config: dict, federation_config: dict | None = None) -> Path:
        """``flwr run`` the featherfl app (returns once the SuperLink accepted it); returns its run folder."""
        unknown = set(run_config) - set(RUN_CONFIG)
        if unknown and not self.app_source:
            raise ValueError(f"unknown run config keys {sorted(unknown)}; known: {sorted(RUN_CONFIG)}")
        args = ["flwr", "run", str(self.app_dir), "featherfl-local", "--format", "json"]
        args += ["--run-config", " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())]
        if federation_config:
            args += ["--federation-config", " ".join(f"{k}={_toml(v)}" for k, v in federation_config.items())]
        res = subprocess.run(args, cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise RuntimeError(f"flwr run failed ({res.returncode}): {res.stdout}\n{res.stderr}")
        out = Path(run_config["out"])
        self.run_ids[out] = json.loads(res.stdout[res.stdout.index("{") :])["run-id"]
        return out

    def _flwr(self, *args: str) -> str:
        res = subprocess.run(["flwr", *args, "featherfl-local"], cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=60)
        return res.stdout

    def status(self, out: Path) -> str:
        """Flower's status of the run writing ``out`` (e.g. running, finished:completed, finished:failed)."""
        text = self._flwr("ls", "--run-id", str(self.run_ids[out]), "--format", "json")
        try:
            runs = json.loads(text[text.index("{") :]).get("runs", [])
        except ValueError:
            return "unknown"
        return runs[0]["status"] if runs else "unknown"

    def wait(self, out: Path, timeout: float = 300.0) -> dict:
        """Wait (bounded) for the run folder's summary.json; return the summary."""
        deadline = time.monotonic() + timeout
        next_check = time.monotonic() + 5
        while time.monotonic() < deadline:
            if (out / "summary.json").exists():
                return json.loads((out / "summary.json").read_text())
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a Flower process exited:\n{self.tail()}")
            if time.monotonic() > next_check and out in self.run_ids:
                next_check = time.monotonic() + 5
                status = self.status(out)
                if status.startswith("finished") and not (out / "summary.json").exists():
                    time.sleep(1)
                    if not (out / "summary.json").exists():
                        log = self._flwr("log", str(self.run_ids[out]), "--show")
                        raise RuntimeError(f"Flower run {self.run_ids[out]} ended ({status}) without a summary:\n{log[-4000:]}")
            time.sleep(0.25)
        raise TimeoutError(f"no {out / 'summary.json'} after {timeout}s\n{self.tail()}")

    def run(self, run_config: dict, timeout: float = 300.0, federation_config: dict | None = None) -> dict:
        return self.wait(self.submit(run_config, federation_config), timeout)

    def tail(self, n: int = 4000) -> str:
        parts = []
        for log in self.logs:
            if log.exists():
                parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-n:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop every process started here by its id: SIGTERM to its group, then SIGKILL."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)  # children left in the group, if any
            except (ProcessLookupError, PermissionError):
                pass
            if p.poll() is None:
                p.wait(timeout=5)
        self.procs = []

    def __enter__(self) -> "LocalFederation":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def clean(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
