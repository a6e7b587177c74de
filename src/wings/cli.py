"""The `wings` command: one subcommand per job (data, train, eval, chat, serve, analyze, demo).

Each job lives in its own module and exposes `add_parser(subparsers, name, help_text)`, which registers its
parser and sets `func`. Only the module of the command being run is imported, so a missing optional extra only
affects its own command. `import wings` registers the model with transformers' Auto classes and so loads torch and
transformers (5-10 s); `wings --help` avoids it because the `wings` console script (`src/wings_cli.py`) loads this
file without the package's `__init__` (0.06 s, measured). `python -m wings.cli --help` runs that `__init__` first
and takes as long as `import wings`. This file therefore imports only the standard library at module level.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (command, module that defines it, one-line help); the module must provide `add_parser(subparsers, name, help)`.
COMMANDS: list[tuple[str, str, str]] = [
    ("build", "wings.model.cli", "build a WINGS model from an LLM and a vision tower, save it with its processor"),
    (
        "train",
        "wings.training.cli",
        "train one stage (align, instruct, llava-align, llava-instruct) from a YAML config",
    ),
    ("export", "wings.training.cli", "write a standalone HF directory from a checkpoint that leaves out a frozen LLM"),
    ("data", "wings.training.data_cli", "check data files and convert data sets"),
    ("eval", "wings.evaluation.cli", "score models and their base LLM on text tasks; write the forgetting report"),
    ("chat", "wings.serving.chat", "talk to a WINGS model in the terminal, with images"),
    ("generate", "wings.serving.batch", "answer a file of conversations in batches (resumable)"),
    ("serve", "wings.serving.serve", "serve a WINGS model over an OpenAI-compatible HTTP API"),
    ("analyze", "wings.analysis.cli", "attention-shift analysis: LAWS curves per layer and the shift/score plot"),
    ("iit", "wings.evaluation.iit_cli", "build the Interleaved Image-Text (IIT) benchmark"),
    ("demo", "wings.demo.cli", "train WINGS and the LLaVA-style baseline on easy-vqa, evaluate, write a report"),
]
EPILOG = "`wings COMMAND --help` for a command's options. Computing commands take --threads N (default: measured)."


def requested_command(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option), if any."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `wings` parser: every command listed, only `command`'s module imported (`"*"`: every module)."""
    parser = argparse.ArgumentParser(
        prog="wings", description="WINGS multimodal LLMs without text-only forgetting.", epilog=EPILOG
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name, help_text in COMMANDS:
        if command in (name, "*"):
            importlib.import_module(module_name).add_parser(subparsers, name, help_text)
        else:  # listed in `wings --help` without importing its module
            subparsers.add_parser(name, help=help_text, add_help=False)
    return end_sentences(parser)


def end_sentences(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Every help text of `parser` and its subcommands ends its sentence (one style across the modules)."""
    for action in parser._actions:
        items = [action, *getattr(action, "_choices_actions", [])]  # a subcommand table's rows too
        for item in items:
            if item.help and item.help != argparse.SUPPRESS and not item.help.rstrip().endswith((".", "?", "!")):
                item.help = item.help.rstrip() + "."
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                end_sentences(subparser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, set the thread count of a computing command, run it; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(requested_command(argv))
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if "threads" in vars(args) and not getattr(args, "chooses_threads_per_step", False):
            from wings.threads import set_threads  # here, not above: importing `wings` loads transformers

            set_threads(args.threads, announce=True)
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:  # user-facing problems: one clear line, no traceback
        print(f"wings {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
