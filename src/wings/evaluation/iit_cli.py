"""`wings iit build`: the Interleaved Image-Text benchmark file.

    wings iit build --text arc_easy mmlu --visual vqa_mc.jsonl --data-dir ../shared/data --out runs/iit.jsonl
    # scoring: wings.evaluation.iit.evaluate_iit (the hook for `wings eval --tasks iit:FILE`)

Text sources are evaluation tasks (names, `mc:FILE.jsonl`); visual sources are JSONL files of
{"image", "question", "choices", "answer"} (optionally prefixed `vmc:`). Earlier turns are chosen by TF-IDF
cosine similarity to the scored question, or by a sentence-embedding model with --embedding-model.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from wings.evaluation.iit import CONFIGURATIONS, build_iit, load_sources, write_iit


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """Register `wings iit` and its `build` subcommand."""
    parser = subparsers.add_parser(
        name, help=help_text, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    actions = parser.add_subparsers(dest="iit_command", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build",
        help="write the IIT dialogues",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("--text", nargs="+", default=[], help="text multiple-choice tasks (names or mc:FILE.jsonl)")
    build.add_argument("--visual", nargs="+", default=[], help="visual multiple-choice JSONL files")
    build.add_argument("--out", type=Path, required=True, help="the IIT file to write (JSONL)")
    build.add_argument("--data-dir", type=Path, help="local copies of the text benchmarks")
    build.add_argument("--split", help="split of the text tasks (default: each task's evaluation split)")
    build.add_argument("--per-config", type=int, default=100, help="scored questions per configuration (default 100)")
    build.add_argument(
        "--configs",
        nargs="+",
        default=list(CONFIGURATIONS),
        choices=CONFIGURATIONS,
        metavar="CONFIG",
        help="configurations to build, earlier turns then the scored one, T text and V visual: "
        f"{' | '.join(CONFIGURATIONS)} (default: all six)",
    )
    build.add_argument("--seed", type=int, default=0, help="seed of the question draw (default 0)")
    build.add_argument("--embedding-model", help="a local sentence-embedding model (mean-pooled) instead of TF-IDF")
    build.set_defaults(func=run_build)


def embedding_function(name: str):
    """Mean-pooled, L2-normalised hidden states of a transformers encoder, as `embed(texts) -> array`."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(name), AutoModel.from_pretrained(name).eval()

    @torch.no_grad()
    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), 64):
            batch = tokenizer(texts[start : start + 64], padding=True, truncation=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"][..., None].to(hidden.dtype)
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
        return np.concatenate(out)

    return embed


def run_build(args: argparse.Namespace) -> int:
    """Load the sources, build the dialogues, write them; print the count per configuration."""
    text = load_sources(args.text, "T", args.data_dir, args.split)
    visual = load_sources(args.visual, "V")
    embed = embedding_function(args.embedding_model) if args.embedding_model else None
    dialogues = build_iit(
        text, visual, per_config=args.per_config, seed=args.seed, embed=embed, configurations=args.configs
    )
    write_iit(dialogues, args.out)
    counts = Counter(d["config"] for d in dialogues)
    print(", ".join(f"({c}): {counts[c]}" for c in args.configs))
    print(f"wrote {len(dialogues)} dialogues to {args.out}")
    return 0
