import os

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


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
