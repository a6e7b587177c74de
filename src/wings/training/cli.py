"""`wings train` (one stage, from a YAML config plus `--section.key value` overrides) and `wings export`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from wings.commands import wings_command
from wings.model.modeling_wings import WingsForConditionalGeneration
from wings.model.processing_wings import WingsProcessor
from wings.threads import add_threads_argument

from .arguments import command_line, describe_options, load_config


def missing_data(datasets: list[dict]) -> str | None:
    """A one-line error for the first training file that does not exist, naming the command that writes it."""
    for dataset in datasets:
        path = Path(dataset["path"])
        if path.exists():
            continue
        if "easy" in path.parent.name.lower() and "vqa" in path.parent.name.lower():
            make = f"write it with `{wings_command()} data easy-vqa --out {path.parent}`"
        else:
            make = f"write it in the LLaVA or messages format (`{wings_command()} data check FILE` checks one)"
        return f"training data {path} not found (data.datasets in the config); {make}"
    return None


def run_train(args: argparse.Namespace) -> int:
    from .run import run_stage  # transformers' Trainer loads only when a run starts (a missing file fails faster)

    overrides = list(args.overrides)
    if args.skip_invalid_samples:
        overrides += ["--data.skip_invalid_samples", "true"]
    if args.resume_from:
        overrides += ["--training.resume_from_checkpoint", args.resume_from]
    config = load_config(args.config, overrides)
    problem = missing_data(config.data.datasets)
    if problem:  # before the model loads: seconds, not a minute, to the one line that says what to do
        raise FileNotFoundError(problem)
    output = run_stage(config, command=command_line(["wings", *sys.argv[1:]]), force=args.force)
    if int(os.environ.get("RANK", "0")) != 0:  # one summary per run, not one per process
        return 0
    print(f"\n{config.stage} done: {output}")
    if config.stage in ("align", "llava-align"):
        following = "instruct" if config.stage == "align" else "llava-instruct"
        print(f"next stage: {wings_command()} train --config CONFIG --stage {following} --model.init_from {output}")
    else:
        print(f"chat with it: {wings_command()} chat --model {output}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .provenance import read_provenance  # with the trainer: transformers' Trainer loads only when needed
    from .trainer import PROVENANCE_FILE

    source, target = Path(args.checkpoint), Path(args.out)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source} holds no model (config.json)")
    model = WingsForConditionalGeneration.from_pretrained(source)  # reads a left-out LLM from its reference
    model.config.llm_checkpoint = None
    model.save_pretrained(target)
    WingsProcessor.from_pretrained(source).save_pretrained(target)
    provenance = read_provenance(source)
    if provenance is not None:
        provenance["exported_from"] = str(source)
        (target / PROVENANCE_FILE).write_text(__import__("json").dumps(provenance, indent=2, default=str))
    print(f"exported a standalone model to {target} (loads with AutoModelForImageTextToText.from_pretrained)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    if name == "export":
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--checkpoint", required=True, help="a training output or checkpoint directory")
        parser.add_argument("--out", required=True, help="where to write the standalone HF directory")
        parser.set_defaults(func=run_export)
        return
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=describe_options(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML file with the sections stage, model, data, optim, training")
    parser.add_argument("--force", action="store_true", help="retrain even if the output directory is finished")
    parser.add_argument(
        "--skip-invalid-samples",
        action="store_true",
        help="skip (and count) invalid samples instead of stopping at the first",
    )
    parser.add_argument(
        "--resume-from",
        metavar="CHECKPOINT",
        help="resume from this checkpoint folder (default: the newest complete one in output_dir)",
    )
    add_threads_argument(parser)
    # Any further `--section.key value` pairs override the YAML file (collected by wings.cli as `overrides`).
    parser.set_defaults(func=run_train, accepts_overrides=True)
