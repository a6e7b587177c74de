"""Figures of `wings demo` (matplotlib, PNG): training curves and forgetting bars. LAWS curves come from
`wings.analysis.plots.plot_laws`.

The forgetting differences between models are small next to the values themselves (perplexity 2.1985 against
2.2091, KL 6e-6 against 3e-4), so bars from 0 hide them: each panel draws what separates the models instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from wings.analysis.plots import MODEL_STYLES, _pyplot

BASE = "base LLM"


def plot_training_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], path: Path) -> Path:
    """`curves[stage folder]` = logged [{step, loss}, ...]; stage 1 on the left, stage 2 on the right."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for index, (name, history) in enumerate(curves.items()):
        axis = axes[0] if name.endswith("align") else axes[1]
        if history:
            linestyle, marker = MODEL_STYLES[index % len(MODEL_STYLES)]
            axis.plot(
                [h["step"] for h in history],
                [h["loss"] for h in history],
                linestyle=linestyle,
                marker=marker,
                markersize=max(3.0, 7.0 - index),
                markerfacecolor="none",
                label=name,
                color=f"C{index % 10}",
            )
    for axis, title in zip(axes, ("stage 1 (align)", "stage 2 (instruct)")):
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.set_ylabel("training loss")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:  # a stage without logged losses has no legend to show
            axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def forgetting_panel(measure: str, scores: Mapping[str, float]) -> dict:
    """What one panel draws for `scores[model]` (the base LLM's value under `BASE`): accuracies (measures named
    `... acc`) in percent as in the tables; a measure whose base value is 0 (KL from the base) as values on a log
    scale; any other as differences from the base LLM, in the measure's unit."""
    scores = dict(scores)
    base = scores.pop(BASE, None)
    scale = 100.0 if measure.endswith("acc") else 1.0
    unit = " (points)" if scale == 100.0 else ""
    if not base and scores and all(value > 0 for value in scores.values()):
        return {
            "models": list(scores),
            "heights": [v * scale for v in scores.values()],
            "log": True,
            "labels": [f"{v * scale:.2g}" for v in scores.values()],
            "title": f"{measure} (log scale)",
        }
    if base is None:
        return {
            "models": list(scores),
            "heights": [v * scale for v in scores.values()],
            "log": False,
            "labels": [f"{v * scale:.4g}" for v in scores.values()],
            "title": measure,
        }
    differences = [(value - base) * scale for value in scores.values()]
    shown = f"{base * scale:.1f}%" if scale == 100.0 else f"{base:.5g}"
    return {
        "models": list(scores),
        "heights": differences,
        "log": False,
        "labels": [f"{d:+.2g}" for d in differences],
        "title": f"{measure}: model - base LLM{unit}\n(base LLM {shown}; 0 = no change)",
        "least_range": 1.0 if scale == 100.0 else 1e-4 * abs(base) or 1e-9,
    }  # an axis, even when all are 0


def plot_forgetting(values: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """`values[measure][model]`: one panel per retention measure (see `forgetting_panel`); each model keeps its
    colour across panels."""
    plt = _pyplot()
    measures = list(values)
    models = list(dict.fromkeys(name for scores in values.values() for name in scores if name != BASE))
    colours = {name: f"C{index % 10}" for index, name in enumerate(models)}
    figure, axes = plt.subplots(1, len(measures), figsize=(4.4 * len(measures), 3.9), squeeze=False)
    for axis, measure in zip(axes[0], measures):
        panel = forgetting_panel(measure, values[measure])
        names = panel["models"]
        bars = axis.bar(range(len(names)), panel["heights"], color=[colours[n] for n in names])
        if panel["log"]:
            axis.set_yscale("log")
            low, high = min(panel["heights"]), max(panel["heights"])
            axis.set_ylim(low / 3, high * 4)  # a decade of room below the smallest bar, above for the labels
        else:
            axis.axhline(0, color="black", linewidth=0.8)
            low, high = min(panel["heights"] + [0]), max(panel["heights"] + [0])
            margin = max(0.25 * (high - low), panel.get("least_range", 0.0))
            axis.set_ylim(low - margin, high + margin)  # zoomed on the differences, room for the labels
        axis.bar_label(bars, panel["labels"], fontsize="x-small", padding=2)
        axis.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize="small")
        axis.set_title(panel["title"], fontsize="small")
        axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
