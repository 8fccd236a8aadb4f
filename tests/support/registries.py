"""A fixture for tests that register plug-in models or data sources: the registries are
restored in place afterwards (other modules hold references to the same dicts), so other
tests' lists of known names do not change."""

import pytest


@pytest.fixture()
def own_registries():
    from featherfl.data.dataset import SOURCES
    from featherfl.models import _load_builtin
    from featherfl.models.registry import REGISTRY

    _load_builtin()
    saved = [(reg, dict(reg)) for reg in (REGISTRY, SOURCES)]
    yield
    for reg, items in saved:
        reg.clear()
        reg.update(items)
