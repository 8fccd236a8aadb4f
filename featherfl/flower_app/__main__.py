"""``python -m featherfl.flower_app new DIR``: write the Flower app folder (its pyproject.toml) to DIR."""

from __future__ import annotations

import sys
from pathlib import Path

from featherfl.flower_app import pyproject_text


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "new":
        print("usage: python -m featherfl.flower_app new DIR", file=sys.stderr)
        return 2
    target = Path(argv[1]) / "pyproject.toml"
    if target.exists():
        print(f"featherfl: {target} exists; not overwriting", file=sys.stderr)
        return 2
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(pyproject_text())
    print(f"wrote {target}; run it with: flwr run {target.parent} <superlink-connection>")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
