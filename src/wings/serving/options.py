"""Command-line options shared by `wings chat`, `wings generate` and `wings serve`."""

from __future__ import annotations

import argparse
import sys

from wings.serving.engine import GenerationEngine, SamplingOptions
from wings.threads import add_threads_argument


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model / --device / --dtype: where the checkpoint is and how to load it."""
    parser.add_argument("--model", required=True, help="folder with a saved WINGS model and its processor")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1... (default: cuda when available)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights' dtype (default: as saved)",
    )
    add_threads_argument(parser)


def add_sampling_arguments(parser: argparse.ArgumentParser, temperature: float) -> None:
    """--max-new-tokens / --temperature / --top-p / --seed / --stop."""
    parser.add_argument("--max-new-tokens", type=int, default=512, help="most tokens per answer (default: 512)")
    parser.add_argument(
        "--temperature",
        type=float,
        default=temperature,
        help=f"sampling temperature; 0 = greedy (default: {temperature})",
    )
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (default: 1.0)")
    parser.add_argument("--seed", type=int, help="seed for repeatable sampling")
    parser.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="end the answer before this text (repeatable)"
    )


def sampling_options(args: argparse.Namespace) -> SamplingOptions:
    """The engine's `SamplingOptions` from parsed arguments."""
    return SamplingOptions(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        stop=list(args.stop),
        seed=args.seed,
    )


def load_engine(args: argparse.Namespace, **kwargs) -> GenerationEngine:
    """The generation engine for `--model`, printing where it loads from (to stderr: stdout may be piped)."""
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    return GenerationEngine.from_checkpoint(args.model, device=args.device, dtype=args.dtype, **kwargs)
