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


#: method modules (and their parts) that a FedAvg run has no use for
OTHER_METHODS = (
    "featherfl.algorithms.baffle",
    "featherfl.algorithms.baffle_peft",
    "featherfl.algorithms.baffle_pool",
    "featherfl.algorithms.baffle_replay",
    "featherfl.algorithms.zo",
    "featherfl.algorithms.fedpeft",
    "featherfl.algorithms.fd",
    "featherfl.algorithms.faug",
    "featherfl.algorithms.faug_gan",
    "featherfl.models.cgan",
)


def test_a_default_run_imports_no_method_it_does_not_run(tmp_path):
    """The schema lists every method's keys from their declarations (algorithms/sections.py), so a
    FedAvg run imports FedAvg's module and no other method's (BAFFLE's alone cost about 0.1 s)."""
    code = (
        "import sys\n"
        "from featherfl.cli import main\n"
        f"rc = main(['run', '--rounds', '1', '--clients', '3', '--quiet', '--set', 'log.plots=false', '--set', 'engine.threads=1', '--out', {str(tmp_path / 'r')!r}])\n"
        f"print(rc, 'featherfl.algorithms.fedavg' in sys.modules, ','.join(m for m in {OTHER_METHODS!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.splitlines()[-1] == "0 True "


def test_building_any_config_imports_no_method():
    """Every method's keys are in the schema (a BAFFLE key is checked, a saved config lists them all)
    with no method module imported."""
    code = (
        "import sys\n"
        "from featherfl.schema import build_config\n"
        "cfg = build_config(None, [('algorithm', 'fedavg'), ('baffle.k', '7'), ('fedpeft.method', 'lora'), ('fd.gamma', '0.5'), ('faug.gan_steps', '5')])\n"
        "print(cfg['baffle.k'], ','.join(m for m in sys.modules if m.startswith('featherfl.algorithms.') and m.split('.')[2] in ('baffle', 'fedavg', 'fedpeft', 'fd', 'faug', 'zo', 'faug_gan')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "config key 'baffle.k' is for baffle" in out.stderr  # the foreign-section error, from declarations alone
    code = code.replace("('baffle.k', '7'), ('fedpeft.method', 'lora'), ('fd.gamma', '0.5'), ", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["100"]


def test_declared_keys_are_each_methods_own():
    """A built-in method's CONFIG is its declaration, the very dict the schema reads."""
    from featherfl.algorithms import registry

    for name in registry.names():
        assert registry.config(name) is registry.get(name).CONFIG, name
