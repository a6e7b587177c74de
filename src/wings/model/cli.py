"""`wings build`: assemble a WINGS model from an LLM and a vision tower, save it with its processor."""

from __future__ import annotations

import argparse
from pathlib import Path

from wings.threads import add_threads_argument

from .builder import build_wings
from .configuration_wings import LEARNER_MODES
from .modeling_wings import WingsForConditionalGeneration
from .vision_towers import tower_names


def parameter_table(model: WingsForConditionalGeneration) -> str:
    """Parameters per group, as a markdown table."""
    rows = ["| group | parameters |", "|---|---:|"]
    for group, parameters in model.parameter_groups().items():
        rows.append(f"| {group} | {sum(p.numel() for _, p in parameters):,} |")
    rows.append(f"| **total** | {sum(p.numel() for p in model.parameters()):,} |")
    return "\n".join(rows)


def layer_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"--wings-layers takes comma-separated layer numbers, got {text!r}") from error


def _looks_like_a_folder(name: str) -> bool:
    """A name written as a path (./x, ../x, /x, ~/x): a registry name or hub id never starts so."""
    return name.startswith((".", "/", "~"))


def run_build(args: argparse.Namespace) -> int:
    for option, name in (("--llm", args.llm), ("--vision", args.vision)):
        if _looks_like_a_folder(name) and not Path(name).expanduser().is_dir():
            raise FileNotFoundError(f"{option} {name}: no such folder")
    options = dict(learners=args.learners, lorra_rank=args.lorra_rank, wings_layers=args.wings_layers)
    model, processor = build_wings(args.llm, args.vision, image_preprocess=args.image_preprocess, **options)
    print(
        f"WINGS model: LLM {args.llm} ({model.config.text_config.model_type}, "
        f"{model.config.text_config.num_hidden_layers} layers), vision {args.vision}, learners={args.learners}, "
        f"learner layers {model.config.learner_layers or 'none'}, rank {args.lorra_rank}, "
        f"{model.config.image_seq_length} visual tokens per image"
    )
    print(parameter_table(model))
    out = Path(args.out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    print(f"saved to {out} (load with AutoModelForImageTextToText.from_pretrained after `import wings`)")
    return 0


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--llm", required=True, help="registry name (e.g. smollm2-135m-instruct), hub id or directory")
    parser.add_argument(
        "--vision",
        required=True,
        help=f"SigLIP/CLIP hub id or directory, or a preset (pretrained or from scratch): {', '.join(tower_names())}.",
    )
    parser.add_argument(
        "--learners",
        choices=LEARNER_MODES,
        default="wings",
        help="wings: both learners + router; visual: visual learner alone; none: LLaVA baseline",
    )
    parser.add_argument("--lorra-rank", type=int, default=16, help="rank of the learners' low-rank projections")
    parser.add_argument(
        "--wings-layers",
        type=layer_list,
        default=None,
        help="comma-separated decoder layers that get learners (default: all)",
    )
    parser.add_argument(
        "--image-preprocess",
        choices=["pad", "resize"],
        default="pad",
        help="pad to square with the mean colour (the authors' choice) or resize",
    )
    parser.add_argument("--out", required=True, help="folder to save the model and its processor in.")
    add_threads_argument(parser)
    parser.set_defaults(func=run_build)
