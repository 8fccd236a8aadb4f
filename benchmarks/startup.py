"""Start-up cost: a one-round digits run against a bare ``import torch``.

    .venv/bin/python benchmarks/startup.py                  # writes benchmarks/results/startup.md
    .venv/bin/python benchmarks/startup.py --rounds 3 --out /tmp/startup.md

The goal: ``featherfl run`` with ``log.plots=false`` is done within 0.3 s of ``import torch``.
Measured as whole-process wall time (spawn to exit) of

    python -c "import torch"
    python -c "import torch, gc; gc.freeze()"
    python -m featherfl run --rounds 1 --clients 3 --set log.plots=false --quiet --out DIR
    python -c "import sys; from featherfl.cli import main; sys.exit(main([...the same run...]))"

taken in alternating rounds (so a spell of load from other work falls on all alike); the table
gives medians and the differences. A run freezes the objects its imports made out of the cyclic
garbage collector (``gc.freeze``), so it makes no full collection over torch's objects, neither
during the run nor at exit, where a plain ``import torch`` process makes one (about 0.3 s of CPU
here): the frozen ``import torch`` is the baseline that leaves only featherfl's own cost. The command
ends through ``featherfl.cli.leave`` (atexit hooks, stdio flushed, ``os._exit``); the last process
is the same run ended by the interpreter's teardown, so the difference is what that exit saves. Then one ``python -X importtime`` run of the same job lists the
modules it imports beyond those ``import torch`` imports, by their own import time: what a run
pays for on top of torch. The load average (``os.getloadavg``) is written at the start and the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 0.3
ENV = {
    "PYTHONPATH": str(ROOT),
    "FLWR_TELEMETRY_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}
TORCH = ["-c", "import torch"]
#: the same, its objects frozen out of the collector as a run freezes them: no full collection at exit either
TORCH_FROZEN = ["-c", "import torch, gc; gc.freeze()"]
HEAVY = ("scipy", "sklearn", "matplotlib", "transformers", "flwr", "ray", "pandas")
#: method modules and their parts: a FedAvg run imports only featherfl.algorithms.fedavg of these
METHOD_MODULES = ("baffle", "baffle_peft", "baffle_pool", "baffle_replay", "zo", "fedavg", "fedpeft", "fd", "faug", "faug_gan")


def run_args(out: str) -> list[str]:
    return ["-m", "featherfl", "run", "--rounds", "1", "--clients", "3", "--set", "log.plots=false", "--quiet", "--out", out]


def teardown_args(out: str) -> list[str]:
    """The same run ended by the interpreter's own exit (``sys.exit(main())``), which frees every
    module's objects one by one, instead of the command's ``featherfl.cli.leave``."""
    return ["-c", f"import sys; from featherfl.cli import main; sys.exit(main({run_args(out)[2:]!r}))"]


def environment(cache: str | None) -> dict[str, str]:
    """This environment plus ENV; with ``cache``, Python keeps the bytecode it compiles there (as an
    installed package has it), without, it compiles every featherfl module on every start."""
    env = {**os.environ, **ENV}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPYCACHEPREFIX", None)
    if cache:
        env["PYTHONPYCACHEPREFIX"] = cache
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def wall(args: list[str], env: dict[str, str], extra: list[str] = ()) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds user + system, stderr) of one whole process."""
    t = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        p = subprocess.Popen([sys.executable, *extra, *args], stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(p.pid, 0)
        took = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({p.returncode}): {stderr.strip()[-800:]}")
    return took, usage.ru_utime + usage.ru_stime, stderr


def loaded_after_run(out: str, env: dict[str, str]) -> list[str]:
    """The method modules and heavy libraries in ``sys.modules`` when the same run is over (a
    method's module is imported by ``importlib.import_module``, which ``-X importtime`` does not list)."""
    args = run_args(out)[2:]
    code = (
        "import sys\n"
        "from featherfl.cli import main\n"
        f"main({args!r})\n"
        f"print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m.removeprefix('featherfl.algorithms.') in {METHOD_MODULES!r})))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return r.stdout.split()


def import_times(stderr: str) -> dict[str, tuple[int, int]]:
    """Module -> (own microseconds, nesting depth) from ``-X importtime`` output."""
    out = {}
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            out[m[4]] = (int(m[1]), len(m[3]) // 2)
    return out


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def alternate(n: int, env: dict[str, str], tmp: str, tag: str) -> dict[str, list[float]]:
    """``n`` alternating rounds (import torch, import torch + freeze, the run, the run with the
    interpreter's teardown): wall and CPU seconds of each."""
    got: dict[str, list[float]] = {k: [] for k in ("torch", "frozen", "run", "teardown", "torch_cpu", "frozen_cpu", "run_cpu", "teardown_cpu")}
    wall(TORCH, env)  # warm the file cache (and, with a cache folder, the bytecode) once, untimed
    wall(run_args(f"{tmp}/{tag}-warm"), env)
    for i in range(n):
        for key, job in (("torch", TORCH), ("frozen", TORCH_FROZEN), ("run", run_args(f"{tmp}/{tag}{i}")), ("teardown", teardown_args(f"{tmp}/{tag}{i}t"))):
            took, used, _ = wall(job, env)
            got[key].append(took)
            got[f"{key}_cpu"].append(used)
        print(f"  {tag} round {i + 1}: import torch {got['torch'][-1]:.3f} s, frozen {got['frozen'][-1]:.3f} s, run {got['run'][-1]:.3f} s, with teardown {got['teardown'][-1]:.3f} s", file=sys.stderr, flush=True)
    return got


def rows(label: str, got: dict[str, list[float]]) -> list[str]:
    med = {k: statistics.median(v) for k, v in got.items()}
    return [
        f"| {label} | `import torch` | {med['torch']:.3f} | {min(got['torch']):.3f} | {max(got['torch']):.3f} | {med['torch_cpu']:.3f} |",
        f"| {label} | `import torch, gc; gc.freeze()` | {med['frozen']:.3f} | {min(got['frozen']):.3f} | {max(got['frozen']):.3f} | {med['frozen_cpu']:.3f} |",
        f"| {label} | one-round digits run | {med['run']:.3f} | {min(got['run']):.3f} | {max(got['run']):.3f} | {med['run_cpu']:.3f} |",
        f"| {label} | **run - import torch** | **{med['run'] - med['torch']:.3f}** | {min(got['run']) - min(got['torch']):.3f} | | {med['run_cpu'] - med['torch_cpu']:.3f} |",
        f"| {label} | **run - frozen import torch** | **{med['run'] - med['frozen']:.3f}** | {min(got['run']) - min(got['frozen']):.3f} | | {med['run_cpu'] - med['frozen_cpu']:.3f} |",
        f"| {label} | the run ended by the interpreter's teardown | {med['teardown']:.3f} | {min(got['teardown']):.3f} | {max(got['teardown']):.3f} | {med['teardown_cpu']:.3f} |",
        f"| {label} | **what `leave` saves (teardown - run)** | **{med['teardown'] - med['run']:.3f}** | {min(got['teardown']) - min(got['run']):.3f} | | {med['teardown_cpu'] - med['run_cpu']:.3f} |",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds of the four processes")
    ap.add_argument("--top", type=int, default=15, help="modules listed from -X importtime")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "startup.md"))
    a = ap.parse_args(argv)
    command = "python " + " ".join(["benchmarks/startup.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"command: {command}", flush=True)
    start_load, t0 = load(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cached = environment(f"{tmp}/pycache")
        with_cache = alternate(a.rounds, cached, tmp, "cached")
        without = alternate(a.rounds, environment(None), tmp, "compiled")
        base = import_times(wall(TORCH, cached, ["-X", "importtime"])[2])
        job = import_times(wall(run_args(f"{tmp}/imp"), cached, ["-X", "importtime"])[2])
        loaded = loaded_after_run(f"{tmp}/mods", cached)
    end_load = load()
    beyond = {m: v for m, v in job.items() if m not in base}
    beyond_s = sum(us for us, _ in beyond.values()) / 1e6
    heavy = [m for m in loaded if m in HEAVY]
    methods = [m for m in loaded if m.startswith("featherfl.")]
    lines = [
        "# Start-up: a one-round digits run against `import torch`",
        "",
        f"Written by `benchmarks/startup.py` in {time.perf_counter() - t0:.0f} s. Command: `{command}`",
        "",
        f"Whole-process wall time, {a.rounds} alternating rounds, medians. Goal: the run within {GOAL_S:g} s of `import torch`.",
        "",
        "- `python -c \"import torch\"`",
        "- `python -c \"import torch, gc; gc.freeze()\"`: a run freezes what its imports made out of the cyclic collector",
        "  (`featherfl.cli`), which also spares it the full collection over torch's objects that a plain `import torch` pays",
        "  at exit; against this baseline the difference is featherfl's own cost, nothing of torch's exit",
        "- `python -m featherfl run --rounds 1 --clients 3 --set log.plots=false --quiet --out DIR` (FedAvg on the embedded digits, Dirichlet(0.5));",
        "  the command ends through `featherfl.cli.leave`: every atexit hook, stdio flushed, then `os._exit`, without the interpreter's",
        "  teardown of every module's objects",
        "- the same run ended by the interpreter's teardown: `python -c \"import sys; from featherfl.cli import main; sys.exit(main([...]))\"`",
        "",
        "Two ways Python may start: with a bytecode cache (`PYTHONPYCACHEPREFIX`, warmed by one untimed run), as an installed",
        "package starts (pip compiles its modules on install), and compiling every featherfl module's source on every start",
        "(`PYTHONDONTWRITEBYTECODE=1`). torch's modules come from its installed bytecode either way.",
        "",
        f"Load average (1, 5, 15 min) on {os.cpu_count()} cores: {start_load} at the start, {end_load} at the end. This machine is shared with",
        "other work: above a load of about one per core every second here is longer than an idle machine's.",
        "",
        f"Versions: Python {platform.python_version()}.",
        "",
        "| bytecode | process | median wall s | fastest | slowest | median CPU s (user + system) |",
        "|---|---|---:|---:|---:|---:|",
        *rows("cached", with_cache),
        *rows("compiled each start", without),
        "",
        "The CPU time a process uses moves less with the load than its wall time does (waiting for a core is not counted).",
        "",
        f"Imported beyond `import torch` (one `-X importtime` run, cached bytecode): {len(beyond)} modules, {beyond_s:.3f} s of their own import time.",
        f"Heavy optional libraries imported: {', '.join(heavy) or 'none'}. Method modules imported: {', '.join(methods) or 'none'}.",
        "",
        "| module | own ms |",
        "|---|---:|",
    ]
    for m, (us, _) in sorted(beyond.items(), key=lambda kv: -kv[1][0])[: a.top]:
        lines.append(f"| `{m}` | {us / 1e3:.1f} |")
    lines.append("")
    table = "\n".join(lines)
    print(table)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
