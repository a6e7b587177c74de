"""How to spell a `wings` command in printed advice so that it runs as printed, with or without an activated
virtual environment: `wings` when that name on PATH is this installation's script, else the script's path
(`.venv/bin/wings` from the repository), else `python -m wings.cli` with this interpreter."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def _shortest(path: Path) -> str:
    """`path` relative to the current folder when it lies inside it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def wings_command() -> str:
    """The words that start `wings` in a printed command (`wings`, `.venv/bin/wings` or `PYTHON -m wings.cli`)."""
    script = Path(sys.prefix) / ("Scripts" if os.name == "nt" else "bin") / "wings"
    on_path = shutil.which("wings")
    if on_path and script.exists() and Path(on_path).resolve() == script.resolve():
        return "wings"
    if script.exists():
        return _shortest(Path(os.path.abspath(script)))
    return f"{_shortest(Path(os.path.abspath(sys.executable)))} -m wings.cli"
