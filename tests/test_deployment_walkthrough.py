"""docs/deployment.md's step-by-step, run as written on loopback.

The guide marks its shell blocks with ``<!-- walkthrough: run -->`` (run in order, in one
shell) or ``<!-- walkthrough: background -->`` (each line a long-running process, its own
terminal in the guide). The test joins them into one bash script, changes only the ports
(free loopback ports for 9092, 9094, 9095), waits for each background process's port as
a person would wait for it to start, and runs it in a copy of ``flower/`` with
``FLWR_HOME`` and ``HOME`` in pytest's tmp dir. Step 5 (stop everything) is done the way
the guide says, by PID; whatever is left is killed by its process group in ``finally``,
also when the test fails.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "deployment.md"
PORTS = ("9092", "9094", "9095")
BLOCK = re.compile(r"<!-- walkthrough: (run|background) -->\n[ ]*```bash\n(.*?)\n[ ]*```", re.S)


def walkthrough_blocks(text: str) -> list[tuple[str, str]]:
    """The marked shell blocks, in order, with the list indentation removed."""
    return [(kind, textwrap.dedent(body)) for kind, body in BLOCK.findall(text)]


def test_the_guide_marks_its_steps_in_order():
    text = GUIDE.read_text()
    blocks = walkthrough_blocks(text)
    assert text.count("<!-- walkthrough:") == len(blocks)  # every marker is followed by a bash block
    assert [k for k, _ in blocks] == ["run", "background", "background", "run", "run"]
    exports, link, nodes, config, run = (b for _, b in blocks)
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in exports
    assert link.startswith("flower-superlink --insecure --host 127.0.0.1 --port 9092")
    node_lines = nodes.splitlines()
    assert len(node_lines) == 2 and all("--superlink 127.0.0.1:9092" in line for line in node_lines)
    assert [re.search(r"partition-id=(\d) num-partitions=2", line).group(1) for line in node_lines] == ["0", "1"]
    assert "my-link" in config and run.startswith("flwr run flower/ my-link") and "featherfl report runs/baffle-flower" in run
    assert (ROOT / "flower" / "pyproject.toml").is_file()  # the app folder step 4 names


def test_the_config_step_writes_the_connection_once(tmp_path):
    """Step 3 on a fresh FLWR_HOME and again on the same file: one [superlink.my-link] table, earlier content kept."""
    ((_, config),) = [b for b in walkthrough_blocks(GUIDE.read_text()) if "config.toml" in b[1]]
    home = tmp_path / "flwr-home"
    env = dict(os.environ, FLWR_HOME=str(home), HOME=str(tmp_path))
    for _ in range(2):
        subprocess.run(["bash", "-c", config], env=env, check=True, timeout=30)
    parsed = tomllib.loads((home / "config.toml").read_text())
    assert parsed == {"superlink": {"my-link": {"address": "127.0.0.1:9092", "insecure": True}}}
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n')
    subprocess.run(["bash", "-c", config], env=env, check=True, timeout=30)
    parsed = tomllib.loads((home / "config.toml").read_text())["superlink"]
    assert parsed["default"] == "local" and parsed["my-link"]["address"] == "127.0.0.1:9092"


WAIT_PORT = """wait_port() {  # what a person does: wait until the process in the other terminal is up
  for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.2; done
  echo "port $1 did not open" >&2; exit 1
}
"""


def compose(blocks: list[tuple[str, str]], ports: dict[str, str], logs: Path, pids: Path) -> str:
    """One bash script: run blocks verbatim, background lines with ``&`` (PIDs recorded), ports swapped."""
    out = [WAIT_PORT]
    n = 0
    for kind, body in blocks:
        if kind == "run":
            out.append(body)
            continue
        for line in filter(str.strip, body.splitlines()):
            out.append(f'{line} > "{logs}/background-{n}.log" 2>&1 &\necho $! >> "{pids}"')
            port = re.search(r"--port (\d+)", line)
            if port:
                out.append(f"wait_port {port.group(1)}")
            n += 1
    script = "\n".join(out) + "\n"
    for old, new in ports.items():
        script = re.sub(rf"\b{old}\b", new, script)
    return script


def _alive(pid: int) -> bool:
    """Still running (a zombie waiting for its parent counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _is_flower(pid: int) -> bool:
    try:
        return b"flower-" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses bash, /proc and process groups")
def test_the_guide_runs_end_to_end_on_loopback(tmp_path):
    pytest.importorskip("flwr")
    bindir = Path(sys.executable).parent
    if not (bindir / "flower-superlink").exists():
        pytest.skip("flower-superlink is not installed next to this Python")
    from support.local_federation import _die_with_parent, free_port

    work = tmp_path / "work"
    shutil.copytree(ROOT / "flower", work / "flower", ignore=shutil.ignore_patterns("__pycache__"))
    logs, pids = tmp_path / "logs", tmp_path / "pids"
    logs.mkdir()
    ports = {p: str(free_port()) for p in PORTS}
    assert len(set(ports.values())) == len(PORTS)
    script = tmp_path / "walkthrough.sh"
    script.write_text(compose(walkthrough_blocks(GUIDE.read_text()), ports, logs, pids))
    env = dict(os.environ, HOME=str(tmp_path), FLWR_HOME=str(tmp_path / "flwr-home"), PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    env.update(FLWR_DISABLE_UPDATE_CHECK="1", FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.2")  # start app processes sooner (default 1 s)
    env.pop("VIRTUAL_ENV", None)
    out_log = tmp_path / "walkthrough.log"
    started: list[int] = []
    proc = None
    try:
        with open(out_log, "wb") as fh:
            proc = subprocess.Popen(["bash", str(script)], cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        try:
            rc = proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the walk-through did not finish in 240 s:\n{out_log.read_text(errors='replace')[-3000:]}")
        started = [int(p) for p in pids.read_text().split()]
        log = out_log.read_text(errors="replace")
        assert rc == 0, log[-3000:]
        assert len(started) == 3  # the SuperLink and two SuperNodes

        run = work / "runs" / "baffle-flower"  # relative to the SuperLink's working directory
        summary = json.loads((run / "summary.json").read_text())
        assert summary["rounds_completed"] == 3 and not summary.get("stopped") and summary["algorithm"] == "baffle"
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [1, 2, 3] and all(r["clients_ok"] == 2 and r["bytes_up"] > 0 for r in rows)

        # what the guide says the log shows
        assert "featherfl: ServerApp started" in log
        assert f"featherfl: baffle on digits, 3 rounds, 2 clients -> {run}" in log  # the absolute run folder
        assert all(f"featherfl: round {n}: 2 of 2 SuperNodes replied" in log for n in (1, 2, 3))
        assert re.search(r"baffle-flower\s+baffle\s+digits\s+completed\s+3", log)  # featherfl report's table
        # step 3 made the connection; no flwr command wrote Flower's default file or started its own SuperLink
        home = tmp_path / "flwr-home"
        assert list(tomllib.loads((home / "config.toml").read_text())["superlink"]) == ["my-link"]
        assert not (home / "local-superlink").exists()

        # step 5: Ctrl-C in each terminal
        for pid in started:
            if _alive(pid) and _is_flower(pid):
                os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 30
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in started if _alive(p)], "a Flower process outlived Ctrl-C"
    finally:
        if not started and pids.exists():
            started = [int(p) for p in pids.read_text().split()]
        for pid in started:
            if _alive(pid) and _is_flower(pid):
                os.kill(pid, signal.SIGKILL)
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the Flower processes' own children, if any are left
            except ProcessLookupError:
                pass
            if proc.poll() is None:
                proc.wait(timeout=10)
