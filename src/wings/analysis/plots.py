"""Figures of the attention-shift analysis (matplotlib, PNG), each with a JSON of its numbers beside it.

- `plot_laws`: the LAWS curves per model, one panel per segment (V_before, V_itself, V_after).
- `plot_shift_vs_score`: attention shift against a text score over several checkpoints, with the Pearson
  correlation (the paper's figure 2c).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from wings.analysis.attention_shift import SEGMENTS, pearson

# (line style, marker) per model, in order: curves that coincide stay visible as different dashes and markers.
MODEL_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 3)), "P")]
SEGMENT_TITLES = {
    "V_before": "text before the (first) image",
    "V_itself": "the image(s)",
    "V_after": "text after the (last) image",
}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on servers or in tests
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "plots need matplotlib: pip install matplotlib (the `analysis` extra of wings-mllm: "
            "pip install -e '.[analysis]' in its clone)"
        ) from error
    return plt


def _write_json(data: Any, path: Path) -> Path:
    path.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    return path


def plot_laws(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | Path) -> tuple[Path, Path]:
    """`curves[model][segment]` = per-layer attention mass per query token; writes PATH.png and PATH.json."""
    plt = _pyplot()
    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, len(SEGMENTS), figsize=(4.2 * len(SEGMENTS), 3.8), sharex=True)
    for axis, segment in zip(axes, SEGMENTS):
        for index, (model_name, model_curves) in enumerate(curves.items()):
            values = list(model_curves[segment])
            linestyle, marker = MODEL_STYLES[index % len(MODEL_STYLES)]
            axis.plot(
                range(len(values)),
                values,
                linestyle=linestyle,
                marker=marker,
                markersize=max(3.0, 7.0 - index),
                linewidth=1.4,
                markerfacecolor="none",
                color=f"C{index % 10}",
                label=model_name,
            )
        axis.set_title(f"{segment}: {SEGMENT_TITLES[segment]}")
        axis.set_xlabel("layer")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("attention per query token")
    handles, labels = axes[0].get_legend_handles_labels()  # below the panels: never over a curve
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize="small", frameon=False)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    figure.savefig(path, dpi=120)
    plt.close(figure)
    json_path = _write_json(
        {"segments": list(SEGMENTS), "curves": {m: dict(c) for m, c in curves.items()}}, path.with_suffix(".json")
    )
    return path, json_path


def plot_shift_vs_score(
    points: Mapping[str, tuple[float, float]], path: str | Path, score_name: str = "text score"
) -> tuple[Path, Path, float]:
    """`points[model]` = (attention shift, text score); writes the scatter and its JSON; returns the Pearson r."""
    plt = _pyplot()
    path = Path(path).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [name for name, (shift, score) in points.items() if not (math.isnan(shift) or math.isnan(score))]
    shifts = [points[name][0] for name in names]
    scores = [points[name][1] for name in names]
    correlation = pearson(shifts, scores) if len(names) >= 2 else float("nan")
    figure, axis = plt.subplots(figsize=(4.8, 3.8))
    axis.scatter(shifts, scores)
    for name, x, y in zip(names, shifts, scores):
        axis.annotate(Path(name).name or name, (x, y), fontsize="x-small", xytext=(3, 3), textcoords="offset points")
    axis.set_xlabel("attention shift")
    axis.set_ylabel(score_name)
    axis.set_title(f"attention shift vs {score_name} (Pearson r = {correlation:.3f})")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    data = {
        "score": score_name,
        "pearson": correlation,
        "points": {name: {"attention_shift": shift, "score": score} for name, (shift, score) in points.items()},
        "left_out": sorted(set(points) - set(names)),
    }
    return path, _write_json(data, path.with_suffix(".json")), correlation
