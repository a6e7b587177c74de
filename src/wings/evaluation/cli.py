"""`wings eval`: score models and their base LLM on the same tasks and write the forgetting report.

    wings eval --model runs/wings-smollm2 --tasks arc_easy,retention --data-dir ../shared/data --split validation
    wings eval --model runs/wings-easyvqa --tasks easy-vqa:data/easy-vqa,iit:runs/iit.jsonl
    wings eval --model A --model B --base smollm2-135m-instruct --tasks mmlu --num-fewshot 5

Without `--base`, a WINGS model's base LLM is the one it was built from (its config's `base_llm`);
with only plain LLMs, the first `--model` is the base.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from wings.evaluation.report import markdown_table, write_report
from wings.evaluation.runner import EvalSettings, evaluate_models, load_eval_model
from wings.evaluation.tasks import TASKS, expand_task_names, get_task
from wings.threads import add_threads_argument


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """Register `wings eval`."""
    parser = subparsers.add_parser(
        name, help=help_text, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="registry name, HF causal-LM directory or id, or WINGS checkpoint directory (repeatable)",
    )
    parser.add_argument("--base", help="the base LLM to compare against (default: the WINGS model's own base LLM)")
    named = ", ".join(sorted(n for n in TASKS if not n.startswith("mmlu_") and n != "easy_vqa"))
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["retention"],
        help=f"task names or comma lists: {named}, "
        "mmlu_<subject>, retention, mc:FILE.jsonl, ppl:FILE, easy-vqa (with --data-dir), easy-vqa:DIR, "
        "vqa:FILE.jsonl, mmbench:FILE.tsv, iit:FILE (default: retention)",
    )
    parser.add_argument("--data-dir", type=Path, help="local copies of the benchmarks, in their published layouts")
    parser.add_argument("--split", help="evaluate this split instead of each task's default (e.g. validation)")
    parser.add_argument("--num-fewshot", type=int, default=0, help="exemplars before each question (default 0)")
    parser.add_argument("--batch-size", type=int, default=16, help="requests per forward pass (default 16)")
    parser.add_argument("--limit", type=int, help="only the first N documents of each task (quick checks)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=32, help="length of the base LLM's reference continuations"
    )
    parser.add_argument("--max-tokens", type=int, help="ppl: tasks score only the first N tokens of the file")
    parser.add_argument("--vqa-max-new-tokens", type=int, default=8, help="length of generated VQA answers (default 8)")
    parser.add_argument("--vqa-prompt-suffix", help='appended to vqa:FILE questions, e.g. "Answer with one word."')
    parser.add_argument(
        "--mc-mode",
        choices=["likelihood", "letter"],
        help="visual multiple choice: log-likelihood of each choice, or of its letter after the listed "
        "options (default: letter for mmbench:, likelihood for vqa:)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("runs/eval"), help="folder for results.json and results.md (default runs/eval)"
    )
    parser.add_argument("--output-dir", type=Path, dest="out", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda, cuda:1... (default: cuda when available)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="weights' dtype (default float32)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_threads_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the models, evaluate them and the base LLM, write the report; return the exit code."""
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {args.data_dir} is not a directory")
    for task_name in expand_task_names(args.tasks):  # unknown tasks and missing data fail before any model loads
        task = get_task(task_name)
        if task.kind == "multiple_choice" and task.load is not None:
            task.load(args.data_dir, args.split or task.split)
    dtype = getattr(torch, args.dtype)
    models = [load_eval_model(name, dtype=dtype, device=args.device) for name in args.model]
    base_name = args.base
    if base_name is None:
        bases = sorted({m.base_llm for m in models if m.is_wings and m.base_llm})
        if len(bases) > 1:
            raise ValueError(
                f"the WINGS models were built from different LLMs ({', '.join(bases)}); choose one with --base"
            )
        base_name = bases[0] if bases else models[0].name
    base = next((m for m in models if m.name == base_name), None) or load_eval_model(base_name, dtype, args.device)
    settings = EvalSettings(
        tasks=args.tasks,
        data_dir=args.data_dir,
        split=args.split,
        num_fewshot=args.num_fewshot,
        batch_size=args.batch_size,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        ppl_max_tokens=args.max_tokens,
        progress=not args.no_progress,
        vqa_max_new_tokens=args.vqa_max_new_tokens,
        vqa_prompt_suffix=args.vqa_prompt_suffix,
        mc_mode=args.mc_mode,
    )
    results = evaluate_models([m for m in models if m is not base], base, settings)
    json_path, md_path = write_report(results, args.out)
    print(markdown_table(results))
    print(f"wrote {json_path} and {md_path}")
    return 0
