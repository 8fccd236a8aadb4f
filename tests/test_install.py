"""``pip install .`` gives a featherfl that works outside the repository.

Builds the wheel from this checkout (no network: the build uses the installed setuptools),
installs it with ``--no-deps`` into a fresh venv that sees this test environment's packages
(torch and the rest) through a path file, and runs ``featherfl run --rounds 1`` from a folder
outside the repository. A module left out of the wheel, or code that reads a file beside the
repository, fails here and nowhere else.
"""

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_wheel_installs_and_runs_outside_the_repository(tmp_path):
    import shutil

    src = tmp_path / "src"  # a copy, so the build's own folders never land in the checkout
    shutil.copytree(ROOT / "featherfl", src / "featherfl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(wheels), str(src)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("featherfl-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-2000:]
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    # then the test environment's packages (torch, numpy, ...) after the venv's own: a plain path
    # line, so the checkout's editable-install hook in that folder is not run
    (site / "test-env-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([str(py), "-c", "import featherfl; print(featherfl.__file__)"], cwd=outside, env=env, capture_output=True, text=True, check=True)
    assert str(site) in where.stdout, f"featherfl imported from {where.stdout.strip()}, not the installed wheel"
    run = subprocess.run([str(env_dir / "bin" / "featherfl"), "run", "--rounds", "1", "--clients", "3", "--out", "r", "--quiet", "--set", "engine.threads=1"], cwd=outside, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "fedavg on digits: 1 rounds" in run.stdout
    assert (outside / "r" / "summary.json").is_file()
