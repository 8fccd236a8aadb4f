"""docs/api.md is generated from the docstrings and cannot drift from the code."""

from pathlib import Path

from featherfl.apidoc import ENTRIES, reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_api_reference_is_current():
    doc = (ROOT / "docs" / "api.md").read_text()
    assert doc == reference_markdown(), "regenerate with: .venv/bin/python -m featherfl.apidoc > docs/api.md"


def test_api_reference_covers_the_public_entry_points():
    import featherfl

    listed = {path.rsplit(".", 1)[-1] for _, path, _ in ENTRIES}
    assert set(featherfl.__all__) <= listed
    text = reference_markdown()
    for name in ("featherfl.run(", "featherfl.load_run(", "featherfl.load_model(", "featherfl.Result", "Algorithm", "Aggregator", "load_model(device"):
        assert name in text, name
