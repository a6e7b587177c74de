"""`wings data`: check conversation files before training, convert data sets.

    wings data check FILE [FILE ...] [--image-folder DIR] [--processor DIR --max-length N]
    wings data easy-vqa --out DIR [--max-turns N]

The command lives with training, above the processor: the length check loads a saved processor and hands it to
the data layer's `check_file`, which imports nothing above itself.
"""

from __future__ import annotations

import argparse
import sys

from wings.data.easy_vqa import convert_easy_vqa
from wings.data.validation import check_file
from wings.model.processing_wings import WingsProcessor


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    """Register `wings data` and its subcommands."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    check = commands.add_parser("check", help="validate conversation files and list every problem")
    check.add_argument("files", nargs="+", metavar="FILE", help="LLaVA / messages JSON or JSONL file(s)")
    check.add_argument("--image-folder", help="folder that relative image paths resolve against (default: the file's)")
    check.add_argument("--processor", help="a saved WingsProcessor (or model) folder, to check token lengths")
    check.add_argument("--max-length", type=int, help="maximum sample length in tokens (with --processor)")
    check.add_argument("--no-open-images", action="store_true", help="only check that image files exist")
    check.set_defaults(func=run_check)

    easy_vqa = commands.add_parser("easy-vqa", help="convert the easy-vqa package (pip install -e '.[data]')")
    easy_vqa.add_argument("--out", required=True, help="output folder")
    easy_vqa.add_argument("--max-turns", type=int, help="questions per conversation (default: all of an image's)")
    easy_vqa.add_argument("--seed", type=int, default=0, help="order of the training questions")
    easy_vqa.add_argument("--source", help="easy-VQA's data folder (default: the installed easy_vqa package's)")
    easy_vqa.set_defaults(func=run_easy_vqa)
    return parser


def run_check(args: argparse.Namespace) -> int:
    """Print a report per file; exit code 1 when any problem was found."""
    processor = None
    if args.processor:
        processor = WingsProcessor.from_pretrained(args.processor)
    if (processor is None) != (args.max_length is None):
        raise ValueError("--processor and --max-length go together (the length check needs both)")
    found = 0
    for path in args.files:
        report = check_file(path, args.image_folder, processor, args.max_length, open_images=not args.no_open_images)
        print(report.format())
        found += len(report.problems)
    return 1 if found else 0


def run_easy_vqa(args: argparse.Namespace) -> int:
    """Convert the easy-vqa package to LLaVA-format train/test files; exit code 1 when its extra is missing."""
    try:
        counts = convert_easy_vqa(args.out, data_dir=args.source, max_turns=args.max_turns, seed=args.seed)
    except ImportError as error:  # the optional extra is missing: say how to get it, no traceback
        print(f"wings data easy-vqa: error: {error}", file=sys.stderr)
        return 1
    for split in ("train", "test"):
        c = counts[split]
        print(
            f"{split}: {c['images']} images, {c['questions']} questions ({c['yes_no_questions']} yes/no) "
            f"in {c['conversations']} conversations -> {args.out}/{split}.json"
        )
    print(
        f"answers: {counts['answers']} -> {args.out}/answers.json; "
        f"per-question test set: {args.out}/test_questions.jsonl"
    )
    return 0
