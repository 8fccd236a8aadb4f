"""The Python API reference (docs/api.md), generated from the code's signatures and docstrings.

``python -m featherfl.apidoc > docs/api.md`` writes it; ``tests/test_api_doc.py`` keeps the page
equal to this output, as ``featherfl config-doc`` does for docs/config.md, so a changed
signature or docstring cannot leave the page behind.
"""

from __future__ import annotations

import inspect
from typing import Any

#: (heading, dotted object, members to list or None for the object alone), in page order.
ENTRIES: list[tuple[str, str, list[str] | None]] = [
    ("Running and reading runs", "featherfl.api.run", None),
    ("", "featherfl.api.load_run", None),
    ("", "featherfl.export.load_model", None),
    ("", "featherfl.export.export_run", None),
    ("", "featherfl.api.Result", ["run_dir", "summary", "metrics", "status", "accuracy", "final_accuracy", "bytes_up", "bytes_down", "load_model"]),
    ("", "featherfl.config.ConfigError", None),
    ("Plug-ins by dotted path", "featherfl.plugins", None),
    ("Writing a method", "featherfl.algorithms.base.Algorithm", ["validate", "configure", "uplink_specs", "aggregate", "evaluate", "state_dict", "load_state_dict", "setup_configure", "round_configure", "summary_extra", "artifacts"]),
    ("", "featherfl.algorithms.base.ClientHalf", ["downlink_specs", "update", "evaluate"]),
    ("", "featherfl.algorithms.base.Context", ["build_model"]),
    ("", "featherfl.algorithms.aggregate.Aggregator", ["from_section", "weights", "__call__", "survives"]),
]

INTRO = """# Python API reference

Generated from the docstrings by `python -m featherfl.apidoc > docs/api.md`; a test keeps it in
sync. A walk-through with examples: [python.md](python.md); the config keys: [config.md](config.md).
"""


def _resolve(path: str) -> Any:
    import importlib

    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return importlib.import_module(path)


def _markdown(text: str) -> str:
    """reStructuredText roles and double backticks as markdown code."""
    import re

    text = re.sub(r":(?:class|func|mod|meth):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _doc(obj: Any) -> str:
    return _markdown(inspect.cleandoc(obj.__doc__ or "").strip())


def _annotation(a: Any) -> str:
    return a if isinstance(a, str) else inspect.formatannotation(a)


def _signature(name: str, obj: Any) -> str:
    """``name(a: T = 1, *, b=None) -> R`` with annotations as written (not quoted strings)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return name
    parts, star = [], False
    for p in sig.parameters.values():
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.kind is p.VAR_POSITIONAL:
            star = True
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}" if p.annotation is not p.empty else f"={p.default!r}"
        parts.append(text)
    ret = f" -> {_annotation(sig.return_annotation)}" if sig.return_annotation is not sig.empty else ""
    return f"{name}({', '.join(parts)}){ret}"


def _field_comments(cls: type) -> dict[str, str]:
    """``#:`` comments above class attributes (what a dataclass field holds)."""
    import re

    out, pending = {}, []
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return out
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        m = re.match(r"(\w+)\s*:", stripped)
        if m and pending:
            out[m.group(1)] = " ".join(pending)
        pending = []
    return out


def _member(cls: type, name: str) -> list[str]:
    raw = inspect.getattr_static(cls, name, None)
    hints = getattr(cls, "__annotations__", {})
    if isinstance(raw, property):
        ret = raw.fget.__annotations__.get("return", "")
        head = f"- `{name}` (property{': ' + str(ret) if ret else ''})"
        doc = _doc(raw.fget)
    elif isinstance(raw, (classmethod, staticmethod)):
        head = f"- `{_signature(name, getattr(cls, name))}`" + (" (classmethod)" if isinstance(raw, classmethod) else "")
        doc = _doc(raw.__func__)
    elif callable(raw):
        sig = _signature(name, raw).replace("(self, ", "(").replace("(self)", "()")
        if name == "__call__":
            sig = sig.replace("__call__(", "instance(", 1)
        head = f"- `{sig}`"
        doc = _doc(raw)
    else:
        head = f"- `{name}: {_annotation(hints.get(name, type(raw).__name__))}`"
        doc = _markdown(_field_comments(cls).get(name, ""))
    return [head + (": " + " ".join(doc.split()) if doc else "")]


def reference_markdown() -> str:
    lines = [INTRO]
    for heading, path, members in ENTRIES:
        if heading:
            lines += [f"## {heading}", ""]
        obj = _resolve(path)
        short = path.split(".")[-1]
        public = "featherfl." + short if path.startswith(("featherfl.api.", "featherfl.export.load_model")) else path
        if inspect.ismodule(obj):
            lines += [f"### `{path}`", "", _doc(obj), ""]
            continue
        title = f"### `{public}`" if inspect.isclass(obj) else f"### `{public.rpartition('.')[0]}.{_signature(short, obj)}`"
        doc = _doc(obj) if obj.__doc__ else _doc(inspect.getmodule(obj))  # e.g. Algorithm: its module says it
        lines += [title, "", doc, ""]
        if members:
            for m in members:
                lines += _member(obj, m)
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
