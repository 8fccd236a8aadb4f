import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True)
def _registries_restored():
    """A test that registers a plug-in (a dotted path, a Python model or dataset) must not change
    the names every later test sees, e.g. the generated config reference."""
    import featherfl.data.sources  # noqa: F401  (the built-in sources register on import)
    from featherfl import models as model_package
    from featherfl.algorithms.registry import REGISTRY as algorithms
    from featherfl.data.dataset import SOURCES as sources
    from featherfl.models.registry import REGISTRY as models

    model_package._load_builtin()  # built-ins register once per process: keep them in the snapshot
    try:
        import featherfl.data.text  # noqa: F401  (sst2, agnews: registered once, on first import)
    except ImportError:  # without the text extra
        pass

    saved = [(r, dict(r)) for r in (algorithms, sources, models)]
    yield
    for registry, before in saved:
        registry.clear()
        registry.update(before)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts on one intra-op thread (pytest_configure's choice), whatever an earlier
    test's run chose (``engine.threads=0`` picks by model size): results and speed never depend
    on the order tests ran in."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture
def cfg_factory():
    from featherfl.schema import build_config

    def make(**kw):
        return build_config(overrides=[(k.replace("__", "."), v) for k, v in kw.items()])

    return make


def pytest_configure(config):
    # Small models on 2 cores: one intra-op thread is faster and far less sensitive to load.
    import torch

    torch.set_num_threads(1)
