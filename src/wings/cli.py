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
    ("build", "wings.model.cli", "build a WINGS model from an LLM and a vision tower, save it with its processor"),
    ("train", "wings.training.cli", "train one stage (align, instruct, llava-align, llava-instruct) from a YAML config"),
    ("export", "wings.training.cli", "write a standalone HF directory from a checkpoint that leaves out a frozen LLM"),
    ("data", "wings.data.cli", "check data files and convert data sets"),
    ("eval", "wings.evaluation.cli", "score models and their base LLM on text tasks; write the forgetting report"),
    ("chat", "wings.serving.chat", "talk to a WINGS model in the terminal, with images"),
    ("generate", "wings.serving.batch", "answer a file of conversations in batches (resumable)"),
    ("serve", "wings.serving.serve", "serve a WINGS model over an OpenAI-compatible HTTP API"),
    ("analyze", "wings.analysis.cli", "attention-shift analysis: LAWS curves per layer and the shift/score plot"),
    ("iit", "wings.analysis.iit_cli", "build the Interleaved Image-Text (IIT) benchmark"),
    ("demo", "wings.demo.cli", "train WINGS and the LLaVA-style baseline on easy-vqa, evaluate, write a report"),
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
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
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
