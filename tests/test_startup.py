"""Start-up cost: a run imports only what it uses."""

import subprocess
import sys

import numpy as np


def test_digits_equal_scikit_learns():
    from sklearn.datasets import load_digits

    from featherfl.data.sources import digits_arrays

    images, target = digits_arrays()
    d = load_digits()
    assert np.array_equal(images, d.images) and np.array_equal(target, d.target)


def test_a_digits_run_imports_no_heavy_optional_library():
    """scikit-learn, matplotlib and transformers cost seconds to import; a default run needs none of them."""
    code = (
        "import sys\n"
        "from featherfl.schema import build_config\n"
        "from featherfl.experiment import prepare\n"
        "prepare(build_config(None, [('clients', '3'), ('engine.threads', '1')]))\n"
        "print(','.join(m for m in ('sklearn', 'matplotlib', 'transformers', 'peft', 'flwr', 'ray') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""


def test_a_quiet_digits_run_imports_no_text_library(tmp_path):
    """--quiet silences transformers through its environment variables; a run that never uses
    transformers must not import it just to silence it (about 0.6 s of every job)."""
    code = (
        "import sys\n"
        "from featherfl.cli import main\n"
        f"rc = main(['run', '--rounds', '1', '--clients', '3', '--quiet', '--set', 'log.plots=false', '--set', 'engine.threads=1', '--out', {str(tmp_path / 'r')!r}])\n"
        "print(rc, ','.join(m for m in ('transformers', 'peft', 'matplotlib') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.splitlines()[-1] == "0 "
