"""The forgetting report: `results.json` and a markdown table of scores and deltas to the base LLM.

Per task and metric the table shows each model's score and its delta to the base LLM (model - base).
Forgetting, per model, is the mean over text-only multiple-choice tasks of (base acc - model acc), in
points: positive means the model lost text ability. Perplexity and KL are shown but not averaged
(their units differ).
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
    return f"{100 * value:.2f}" if metric in PERCENT_METRICS else f"{value:.4f}"


def markdown_table(results: dict[str, Any]) -> str:
    """Rows: task/metric; columns: the base LLM, then each model with its delta to the base."""
    base_name = results["base"]
    others = [name for name in results["models"] if name != base_name]
    header = ["task", "metric", f"{base_name} (base)"] + [part for name in others for part in (name, "delta")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, info in results["tasks"].items():
        for metric in info["metrics"]:
            base_value = results["models"][base_name][task][metric]
            row = [task, metric + (" (lower is better)" if metric in LOWER_IS_BETTER else ""), _format(metric, base_value)]
            for name in others:
                value = results["models"][name][task][metric]
                row += [_format(metric, value), ("+" if value >= base_value else "") + _format(metric, value - base_value)]
            lines.append("| " + " | ".join(row) + " |")
    summary = []
    for name in others:
        value = forgetting(results, name)
        if value is not None:
            summary.append(f"- **{name}**: forgetting {value:+.2f} points (mean base acc - model acc over text-only tasks)")
    settings = results.get("settings", {})
    notes = f"\n\n{settings.get('num_fewshot', 0)}-shot; accuracies in points; delta = model - base."
    return "\n".join(lines) + notes + ("\n\n" + "\n".join(summary) if summary else "") + "\n"


def write_report(results: dict[str, Any], output_dir: Path) -> tuple[Path, Path]:
    """Write results.json (with forgetting added) and results.md; return their paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = dict(results)
    results["forgetting"] = {name: forgetting(results, name) for name in results["models"] if name != results["base"]}
    json_path, md_path = output_dir / "results.json", output_dir / "results.md"
    json_path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    md_path.write_text("# Text-only evaluation\n\n" + markdown_table(results))
    return json_path, md_path
