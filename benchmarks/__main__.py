"""Run every benchmark table (or those named) and print them as Markdown.

    python -m benchmarks [--quick] [--only training_step lm_head generation flops] [--threads N] [--size SIZE]

Each table compares variants measured in this run, interleaved; read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

MODULES = (
    "training_step",
    "lm_head",
    "generation",
    "flops",
    "vision_features",
    "learner_cache",
    "loading",
    "checkpointing",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny models, short sequences (seconds, for checks)")
    parser.add_argument("--only", nargs="+", choices=MODULES, default=list(MODULES))
    parser.add_argument("--size", choices=("tiny", "small", "demo"), help="one model size for every table")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a busy shared CPU, more threads than free cores spin and "
        "stall; use the core count on an idle machine)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    import transformers

    from .common import configure_malloc, machine_description

    configure_malloc()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print(f"Machine: {machine_description()}\n", flush=True)
    start = time.perf_counter()
    for name in args.only:
        module = importlib.import_module(f"benchmarks.{name}")
        began = time.perf_counter()
        for table in module.run(quick=args.quick, size=args.size):
            print(table.render(), flush=True)
        print(f"({name}: {time.perf_counter() - began:.0f} s)\n", file=sys.stderr, flush=True)
    print(f"Total: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
