"""Print the project's pinned dependencies from pyproject.toml, one per line.

    python cluster/requirements.py > requirements.txt && pip install -r requirements.txt

The image installs them in a layer of their own, before the source is copied, so a code
change does not re-download torch. pyproject.toml stays the only place versions are pinned.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def dependencies(pyproject: Path = PYPROJECT, extras: tuple[str, ...] = ()) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    deps = list(project["dependencies"])
    for extra in extras:
        deps += project["optional-dependencies"][extra]
    return deps


if __name__ == "__main__":
    # Optional arguments name extras, e.g. `python cluster/requirements.py demo`.
    print("\n".join(dependencies(extras=tuple(sys.argv[1:]))))
