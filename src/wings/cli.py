"""The `wings` command: one subcommand per job (data, train, eval, chat, serve, analyze, demo).

Each job lives in its own module and exposes `add_parser(subparsers)`, which registers its parser and
sets `func`; modules are imported lazily so `wings --help` stays fast and a missing optional extra only
affects its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (command, module that defines it, one-line help); the module must provide `add_parser(subparsers)`.
COMMANDS: list[tuple[str, str, str]] = [
    ("info", "wings.model.cli", "build a WINGS model from an LLM and a vision tower and describe it"),
    ("eval", "wings.evaluation.cli", "score models and their base LLM on text tasks; write the forgetting report"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wings", description="WINGS multimodal LLMs without text-only forgetting.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name, help_text in COMMANDS:
        module = importlib.import_module(module_name)
        module.add_parser(subparsers, name, help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:  # user-facing problems: one clear line, no traceback
        print(f"wings {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
