"""The forgetting report: `results.json` and a markdown table of scores and deltas to the base LLM.

Per task and metric the table shows each model's score and its delta to the base LLM (model - base).
Forgetting, per model, is the mean over text-only multiple-choice tasks of (base acc - model acc), in
points: positive means the model lost text ability. Perplexity and KL are shown but not averaged
(their units differ). Multimodal tasks (VQA, IIT) get their rows too, with their breakdowns (IIT per
configuration, MMBench per category) as `acc[name]` rows; a score marked † comes from a model that could
not see the images (question text alone), and easy-vqa's answer-prior baseline is stated under the table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PERCENT_METRICS = ("acc", "acc_norm")
LOWER_IS_BETTER = ("perplexity", "kl", "nll", "bits_per_byte")


def forgetting(results: dict[str, Any], model_name: str) -> float | None:
    """Mean (base acc - model acc) in points over the text-only multiple-choice tasks; None if there are none."""
    base, scores = results["models"][results["base"]], results["models"][model_name]
    deltas = [
        100.0 * (base[task]["acc"] - scores[task]["acc"])
        for task, info in results["tasks"].items()
        if info["text_only"] and info["kind"] == "multiple_choice" and task in scores and task in base
    ]
    return sum(deltas) / len(deltas) if deltas else None


def _format(metric: str, value: float) -> str:
    return f"{100 * value:.2f}" if metric in PERCENT_METRICS or metric.startswith("acc") else f"{value:.4f}"


BREAKDOWNS = ("configs", "categories")  # IIT configurations, VQA categories: {name: {"acc": ...}}


def _rows(results: dict[str, Any], task: str, metrics: list[str]) -> list[tuple[str, Any]]:
    """(label, getter) per table row: the task's metrics, then its breakdowns as `acc[name]`."""
    rows: list[tuple[str, Any]] = [(m, lambda scores, m=m: scores.get(m)) for m in metrics]
    base = results["models"][results["base"]].get(task, {})
    for key in BREAKDOWNS:
        for name in base.get(key, {}):
            rows.append(
                (f"acc[{name}]", lambda scores, key=key, name=name: scores.get(key, {}).get(name, {}).get("acc"))
            )
    return rows


def _cell(metric: str, value: Any, scores: dict[str, Any]) -> str:
    if value is None:
        return "-"
    return _format(metric, value) + ("†" if scores.get("images_seen") is False else "")


def markdown_table(results: dict[str, Any]) -> str:
    """Rows: task/metric; columns: the base LLM, then each model with its delta to the base."""
    base_name = results["base"]
    others = [name for name in results["models"] if name != base_name]
    header = ["task", "metric", f"{base_name} (base)"] + [part for name in others for part in (name, "delta")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    blind = False
    for task, info in results["tasks"].items():
        base_scores = results["models"][base_name][task]
        blind |= any(results["models"][name][task].get("images_seen") is False for name in results["models"])
        for metric, get in _rows(results, task, info["metrics"]):
            base_value = get(base_scores)
            label = metric + (" (lower is better)" if metric in LOWER_IS_BETTER else "")
            row = [task, label, _cell(metric, base_value, base_scores)]
            for name in others:
                scores = results["models"][name][task]
                value = get(scores)
                delta = (
                    "-"
                    if value is None or base_value is None
                    else (("+" if value >= base_value else "") + _format(metric, value - base_value))
                )
                row += [_cell(metric, value, scores), delta]
            lines.append("| " + " | ".join(row) + " |")
    summary = []
    for name in others:
        value = forgetting(results, name)
        if value is not None:
            summary.append(
                f"- **{name}**: forgetting {value:+.2f} points (mean base acc - model acc over text-only tasks)"
            )
    settings = results.get("settings", {})
    notes = f"\n\n{settings.get('num_fewshot', 0)}-shot; accuracies in points; delta = model - base."
    if blind:
        notes += "\n\n† scored on the question text alone: the model cannot see images."
    for task, info in results["tasks"].items():
        prior = info.get("answer_prior")
        if prior:
            parts = ", ".join(f"{m} {100 * prior[m]:.2f}" for m in info["metrics"] if m in prior)
            answers = ", ".join(f"{kind}: {answer!r}" for kind, answer in prior.get("answers", {}).items())
            notes += f"\n\n{task} answer-prior baseline (most frequent training answer per type; {answers}): {parts}."
        by_question = info.get("question_prior")
        if by_question:
            parts = ", ".join(f"{m} {100 * by_question[m]:.2f}" for m in info["metrics"] if m in by_question)
            notes += (
                f"\n\n{task} question-prior baseline (the most frequent training answer of the same question, "
                f"image never seen): {parts}."
            )
    return "\n".join(lines) + notes + ("\n\n" + "\n".join(summary) if summary else "") + "\n"


def write_report(results: dict[str, Any], output_dir: Path) -> tuple[Path, Path]:
    """Write results.json (with forgetting added) and results.md; return their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = dict(results)
    results["forgetting"] = {name: forgetting(results, name) for name in results["models"] if name != results["base"]}
    json_path, md_path = output_dir / "results.json", output_dir / "results.md"
    json_path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    md_path.write_text("# Evaluation\n\n" + markdown_table(results))
    return json_path, md_path
