"""Reference check: `wings eval` vs lm-evaluation-harness on ARC-Easy validation, same data and prompts.

    python benchmarks/arc_easy_reference_check.py [--model smollm2-135m-instruct] [--limit N]

Needs the `eval` and `demo` extras and ../shared/data (the ARC-Easy validation jsonl). Prints acc and
acc_norm from both tools and their difference in points (docs/evaluation.md records a full run).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--limit", type=int, help="first N questions only (a quick run)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.chdir(ROOT)  # the lm-eval task config reads ../shared/data relative to the repository root

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from wings.evaluation.multiple_choice import evaluate_multiple_choice
    from wings.evaluation.runner import load_eval_model
    from wings.evaluation.tasks import get_task
    from wings.model.registry import resolve_llm

    loaded = load_eval_model(args.model)
    task = get_task("arc_easy")
    start = time.time()
    ours = evaluate_multiple_choice(
        loaded.model,
        loaded.tokenizer,
        task,
        task.load(DATA.resolve(), "validation"),
        batch_size=args.batch_size,
        limit=args.limit,
        progress=True,
    )
    ours_s = time.time() - start
    start = time.time()
    out = simple_evaluate(
        model="hf",
        model_args=f"pretrained={resolve_llm(args.model)},dtype=float32",
        tasks=["arc_easy_local"],
        task_manager=TaskManager(include_path=str(ROOT / "benchmarks/lm_eval_tasks")),
        batch_size=args.batch_size,
        device="cpu",
        limit=args.limit,
    )
    theirs_s = time.time() - start
    theirs = out["results"]["arc_easy_local"]
    print(f"ARC-Easy validation, {ours['num_samples']} questions, {args.model}, 0-shot")
    print("| tool | acc | acc_norm | seconds |\n|---|---|---|---|")
    print(f"| wings eval | {100 * ours['acc']:.2f} | {100 * ours['acc_norm']:.2f} | {ours_s:.0f} |")
    print(
        f"| lm-eval {out['config'].get('model', 'hf')} | {100 * theirs['acc,none']:.2f} | "
        f"{100 * theirs['acc_norm,none']:.2f} | {theirs_s:.0f} |"
    )
    print(
        f"difference (points): acc {100 * (ours['acc'] - theirs['acc,none']):+.2f}, "
        f"acc_norm {100 * (ours['acc_norm'] - theirs['acc_norm,none']):+.2f}"
    )


if __name__ == "__main__":
    main()
