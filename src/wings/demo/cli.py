"""`wings demo`: train WINGS and the LLaVA-style baseline on easy-vqa, evaluate them side by side, write a report.

    wings demo                  # the default run (runs/demo)
    wings demo --quick          # a minutes-long check of the whole pipeline (runs/demo-quick)
    wings demo --ablations      # also the visual learner alone (no textual learner, no router)
    wings demo --seeds 3        # every model trained with 3 seeds: mean and spread, differences beyond the spread
    wings demo --vision siglip-scratch-32   # a small SigLIP trained from scratch instead (runs/demo-siglip-scratch-32)
    wings demo --vision-feature-layer -5    # the tower's block 13 instead of its head (runs/demo-layer-5)

Every step is skipped when its output exists: run it again to resume or to re-read the report.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from wings.threads import add_threads_argument


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(
        name, help=help_text, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the small preset (a few minutes)")
    parser.add_argument("--ablations", action="store_true", help="add the visual-learner-only model")
    parser.add_argument("--out", type=Path, help="output folder (default runs/demo, runs/demo-quick with --quick)")
    parser.add_argument(
        "--vision",
        metavar="TOWER",
        help="vision tower: a preset (default efficientnet-lite0-in1k, pretrained and frozen; "
        "siglip-scratch-32 trains a small SigLIP from scratch) or a SigLIP/CLIP folder",
    )
    parser.add_argument(
        "--vision-feature-layer",
        type=int,
        metavar="N",
        help="the tower's hidden state the models read (default: the tower's own, the head of EfficientNet-Lite0; "
        "docs/vision-towers.md measures each); refused before any step when the tower has no such map",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="train every model N times with seeds 0..N-1 and report mean and spread (default 1)",
    )
    add_threads_argument(parser)  # the pipeline applies it, or re-measures, before every step
    parser.add_argument(
        "--no-eval-cache",
        action="store_true",
        help="recompute the base LLM's evaluation instead of reading it from ~/.cache/wings/eval",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_demo, chooses_threads_per_step=True)


def run_demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Here, after the environment is set and not at import: `wings --help` must not load torch (the launcher).
    from wings.demo.pipeline import DemoPipeline
    from wings.demo.settings import DemoSettings

    if args.seeds < 1:
        raise SystemExit(f"wings demo: --seeds must be at least 1, got {args.seeds}.")
    overrides: dict = {"ablations": args.ablations, "progress": not args.no_progress, "seeds": args.seeds}
    if args.vision is not None:
        from wings.model.vision_towers import tower_names

        if args.vision not in tower_names() and not Path(args.vision).expanduser().is_dir():  # before any step runs
            raise SystemExit(
                f"wings demo: --vision {args.vision}: not a preset ({', '.join(tower_names())}) and no such folder."
            )
        overrides["vision"] = args.vision
        if args.out is None:  # another tower's models must not be mistaken for the default run's finished steps
            overrides["out"] = Path(f"runs/demo{'-quick' if args.quick else ''}-{Path(args.vision).name}")
    if args.vision_feature_layer is not None:
        overrides["vision_feature_layer"] = args.vision_feature_layer
        if args.out is None:  # as for --vision: the default run's models stay as they are
            default = overrides.get("out", Path(f"runs/demo{'-quick' if args.quick else ''}"))
            overrides["out"] = Path(f"{default}-layer{args.vision_feature_layer}")
    if args.out is not None:
        overrides["out"] = args.out
    if args.no_eval_cache:
        overrides["eval_cache"] = None
    if args.threads is not None:
        overrides["threads"] = args.threads
    settings = DemoSettings.quick(**overrides) if args.quick else DemoSettings.default(**overrides)
    DemoPipeline(settings).run()
    return 0
