"""Figures of `wings demo` (matplotlib, PNG): training curves and forgetting bars. LAWS curves come from
`wings.analysis.plots.plot_laws`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from wings.analysis.plots import _pyplot


def plot_training_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], path: Path) -> Path:
    """`curves[stage folder]` = logged [{step, loss}, ...]; stage 1 on the left, stage 2 on the right."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, history in curves.items():
        axis = axes[0] if name.endswith("align") else axes[1]
        if history:
            axis.plot([h["step"] for h in history], [h["loss"] for h in history], marker="o", markersize=2.5, label=name)
    for axis, title in zip(axes, ("stage 1 (align)", "stage 2 (instruct)")):
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.set_ylabel("training loss")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_forgetting(values: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """`values[measure][model]`: one panel per retention measure (the base LLM's value drawn as a line)."""
    plt = _pyplot()
    measures = list(values)
    figure, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.6), squeeze=False)
    for axis, measure in zip(axes[0], measures):
        scores = dict(values[measure])
        base = scores.pop("base LLM", None)
        names = list(scores)
        axis.bar(range(len(names)), [scores[n] for n in names], color=[f"C{i}" for i in range(len(names))])
        if base is not None:
            axis.axhline(base, color="black", linestyle="--", linewidth=1, label=f"base LLM {base:.4g}")
            axis.legend(fontsize="small")
        axis.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize="small")
        axis.set_title(measure, fontsize="medium")
        axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
