"""The `wings` console command, kept beside the `wings` package rather than in it.

Importing the package registers WINGS with transformers' Auto classes, which loads torch and transformers (2-4 s
on a quiet machine, a minute on a busy one). `wings --help` and a mistyped command should not wait for that, so
this launcher loads the command table, `wings/cli.py`, from its file without running the package's `__init__`;
a subcommand imports its own module, and with it the package, only when it runs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def main() -> int:
    """Run `wings` with the process's arguments."""
    package = importlib.util.find_spec("wings")  # finds the package without importing it
    if package is None or not package.submodule_search_locations:
        print("wings: error: the wings package is not installed in this Python", file=sys.stderr)
        return 1
    location = Path(next(iter(package.submodule_search_locations))) / "cli.py"
    spec = importlib.util.spec_from_file_location("wings_command_table", location)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main()


if __name__ == "__main__":
    sys.exit(main())
