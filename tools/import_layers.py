"""The package's import graph as layers: ``python tools/import_layers.py [PACKAGE_DIR]``.

Every ``import`` counts, module- or function-level (not under ``if TYPE_CHECKING:``), the way a
reader follows them. A module's layer is one above the highest layer it imports, so layer 0
imports nothing of the package and every import points to a lower layer. A cycle has no such
order: the script names its modules and exits 1. docs/architecture.md shows this output.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports (``from a import b`` counts ``a`` and, if a module, ``a.b``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for s in node.body for n in ast.walk(s)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def layers(root: Path) -> tuple[dict[str, int], list[str]]:
    """Each module's layer, and the modules left in cycles (no layer)."""
    known = modules(root)
    edges = {m: imports(m, p, known) for m, p in known.items()}
    level: dict[str, int] = {}
    pending = dict(edges)
    while pending:
        ready = [m for m, deps in pending.items() if all(d in level for d in deps)]
        if not ready:
            return level, sorted(pending)
        for m in ready:
            level[m] = 1 + max((level[d] for d in pending[m]), default=-1)
            del pending[m]
    return level, []


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else Path(__file__).resolve().parents[1] / "featherfl")
    level, cyclic = layers(root)
    by_level = defaultdict(list)
    for m, n in level.items():
        by_level[n].append(m.removeprefix(root.name + ".") if m != root.name else m)
    for n in sorted(by_level, reverse=True):
        print(f"{n:>2}  {', '.join(sorted(by_level[n]))}")
    if cyclic:
        print(f"in import cycles (no layer): {', '.join(cyclic)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
