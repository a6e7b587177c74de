"""The demo's report: `results.json`, `report.md`, the PNG plots and the summary table printed at the end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

from wings.analysis.plots import plot_laws
from wings.commands import wings_command
from wings.demo.plots import plot_forgetting, plot_training_curves
from wings.demo.settings import SEED_TAG, DemoSettings, ModelRun, model_runs, settings_dict
from wings.model.vision_towers import is_scratch_preset


class FinishedRun(Protocol):
    """What the report reads of a finished pipeline run (`wings.demo.pipeline.DemoPipeline`)."""

    settings: DemoSettings
    out: Path
    data_dir: Path
    timings: dict[str, float]  # seconds per step
    threads: dict[str, int]  # intra-op threads per step run this time
    speed: dict[str, float]  # the machine's float32 GFLOPS before each step run this time
    skipped: list[str]  # steps done before, not run this time


# (column, task, metric, higher is better)
COLUMNS = [
    ("easy-vqa acc", "easyvqa", "acc", True),
    ("yes/no", "easyvqa", "acc_yes_no", True),
    ("open", "easyvqa", "acc_open", True),
    ("image swap", "easyvqa", "image_swap_changed", True),
    ("image swap, open", "easyvqa", "image_swap_changed_open", True),
    ("retention MC acc", "retention_mc", "acc", True),
    ("KL from base", "retention_lm", "kl", False),
    ("perplexity", "retention_lm", "perplexity", False),
]
RETENTION = [column for column in COLUMNS if column[1].startswith("retention")]
# 95% intervals shown beside an accuracy: (column, metric holding [low, high])
INTERVALS = {"easy-vqa acc": "acc_ci95", "yes/no": "acc_yes_no_ci95", "open": "acc_open_ci95"}


def _task_key(results: dict[str, Any], prefix: str) -> str | None:
    return next((task for task in results["tasks"] if task.startswith(prefix)), None)


def summary_rows(results: dict[str, Any], shifts: dict[str, float | None]) -> dict[str, dict[str, Any]]:
    """{model: {column: value}} with the attention shift, from `wings eval`'s results; accuracies with a 95%
    interval hold (value, low, high)."""
    rows: dict[str, dict[str, Any]] = {}
    for name, scores in results["models"].items():
        row: dict[str, Any] = {}
        for column, prefix, metric, _ in COLUMNS:
            task = _task_key(results, prefix)
            row[column] = scores.get(task, {}).get(metric) if task else None
            interval = scores.get(task, {}).get(INTERVALS.get(column, ""), None) if task else None
            if row[column] is not None and interval:
                row[column] = (row[column], *interval)
        row["attention shift"] = shifts.get(name)
        rows[name] = row
    return rows


def value_of(cell: Any) -> float | None:
    """The number of a summary cell (an accuracy's interval left out)."""
    return cell[0] if isinstance(cell, tuple) else cell


def seed_groups(rows: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Model names by model, the seed tag removed: {"WINGS": ["WINGS", "WINGS [seed 1]", ...]}."""
    groups: dict[str, list[str]] = {}
    for name in rows:
        groups.setdefault(name.split(SEED_TAG)[0], []).append(name)
    return groups


def seed_statistics(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, tuple[float, float, int] | None]]:
    """{model: {column: (mean, standard deviation, seeds)}} over the seeds of each model (sd 0 for one seed)."""
    stats: dict[str, dict[str, tuple[float, float, int] | None]] = {}
    for model, names in seed_groups(rows).items():
        stats[model] = {}
        for column in rows[names[0]]:
            values = [value_of(rows[name][column]) for name in names]
            values = [v for v in values if v is not None and not math.isnan(v)]
            if not values:
                stats[model][column] = None
                continue
            mean = sum(values) / len(values)
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            stats[model][column] = (mean, sd, len(values))
    return stats


def beyond_spread(stats: dict[str, dict[str, Any]], model: str, against: str) -> dict[str, str]:
    """Per column, whether `model` and `against` differ by more than the sum of their seed standard deviations."""
    verdicts = {}
    for column in stats.get(model, {}):
        a, b = stats[model][column], stats.get(against, {}).get(column)
        if a is None or b is None or a[2] < 2 or b[2] < 2:
            continue
        verdicts[column] = "beyond the spread" if abs(a[0] - b[0]) > a[1] + b[1] else "within the spread"
    return verdicts


def _number(column: str, value: float) -> str:
    if column == "KL from base":
        return f"{value:.2e}"
    if column in ("perplexity", "attention shift"):
        return f"{value:.4f}"
    return f"{100 * value:.1f}"


def _cell(column: str, value: Any) -> str:
    if column == "attention shift" and value is None:
        return "n/a"  # a model that sees no image has no attention shift (WINGS.md)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, tuple):
        return f"{_number(column, value[0])} [{100 * value[1]:.1f}, {100 * value[2]:.1f}]"
    return _number(column, value)


def markdown_summary(rows: dict[str, dict[str, Any]]) -> str:
    """One row per model; with several seeds, one row per model with mean +- standard deviation over the seeds."""
    columns = list(next(iter(rows.values())))
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    groups = seed_groups(rows)
    if all(len(names) == 1 for names in groups.values()):
        for name, row in rows.items():
            lines.append(f"| {name} | " + " | ".join(_cell(c, row[c]) for c in columns) + " |")
        return "\n".join(lines)
    stats = seed_statistics(rows)
    for model, names in groups.items():
        cells = []
        for column in columns:
            stat = stats[model][column]
            if stat is None:
                cells.append(_cell(column, None))
            else:
                cells.append(
                    f"{_number(column, stat[0])} ± {_number(column, stat[1])}"
                    if stat[2] > 1
                    else _number(column, stat[0])
                )
        lines.append(f"| {model} ({len(names)} seed{'s' * (len(names) > 1)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def retention_verdicts(rows: dict[str, dict[str, float | None]], model: str, against: str) -> dict[str, str]:
    """Per retention measure, `model` against `against`: "better" (higher MC accuracy, lower KL, lower
    perplexity), "worse", "tie" or "n/a" (a value is missing)."""
    verdicts: dict[str, str] = {}
    for column, _, _, higher in RETENTION:
        a, b = value_of(rows.get(model, {}).get(column)), value_of(rows.get(against, {}).get(column))
        if a is None or b is None:
            verdicts[column] = "n/a"
        else:
            verdicts[column] = "tie" if a == b else ("better" if (a > b) == higher else "worse")
    return verdicts


def write_demo_report(pipeline: FinishedRun) -> dict[str, Any]:
    """Write results.json, report.md and the plots under the demo folder; print the summary; return the numbers."""
    out = pipeline.out
    results = json.loads((out / "eval" / "results.json").read_text())
    analysis = json.loads((out / "analysis" / "attention_shift.json").read_text())
    identity = json.loads((out / "eval" / "align_identity.json").read_text())
    shifts = {name: model["attention_shift"] for name, model in analysis["models"].items()}
    rows = summary_rows(results, shifts)
    vqa_task = _task_key(results, "easyvqa")
    priors = {
        kind: results["tasks"].get(vqa_task, {}).get(kind) if vqa_task else None
        for kind in ("answer_prior", "question_prior")
    }

    curves: dict[str, list] = {}
    for run in model_runs(pipeline.settings):
        for _, folder, _ in (run.align, run.instruct):
            log = out / folder / "loss_history.json"
            curves[folder] = json.loads(log.read_text()) if log.is_file() else []
    plots = {
        "training_curves": plot_training_curves(curves, out / "training_curves.png"),
        "forgetting": plot_forgetting(
            {c: {n: r[c] for n, r in rows.items() if r[c] is not None} for c, *_ in RETENTION}, out / "forgetting.png"
        ),
        "laws": plot_laws({name: model["laws"] for name, model in analysis["models"].items()}, out / "laws.png")[0],
    }
    models = list(seed_groups(rows))
    verdicts = {
        against: retention_verdicts(rows, "WINGS", against)
        for against in models
        if against not in ("WINGS", "base LLM")
    }
    stats = seed_statistics(rows)
    spread = {against: beyond_spread(stats, "WINGS", against) for against in verdicts}
    report = {
        "summary": rows,
        "seed_statistics": stats,
        "wings_differences_against_seed_spread": spread,
        **priors,
        "retention_wings_better_than": verdicts,
        "align_text_identity": identity,
        "timings_s": pipeline.timings,
        "threads": pipeline.threads,
        "machine_gflops": pipeline.speed,
        "skipped_steps": pipeline.skipped,
        "settings": settings_dict(pipeline.settings),
        "chat": chat_command(pipeline),
        "plots": {name: str(path) for name, path in plots.items()},
        "evaluation": results,
        "attention_shift": analysis,
    }
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    table = markdown_summary(rows)
    (out / "report.md").write_text(_markdown(pipeline, table, priors, verdicts, identity, spread))
    print("\n" + table + "\n" + BASE_FOOTNOTE)
    if short_run_note(pipeline.settings):
        print("\n" + short_run_note(pipeline.settings))
    for kind, prior in priors.items():
        if prior:
            print(
                f"\neasy-vqa {PRIOR_TEXT[kind]}: acc {100 * prior['acc']:.1f}, "
                f"yes/no {100 * prior['acc_yes_no']:.1f}, open {100 * prior['acc_open']:.1f}",
                end="",
            )
    print()
    for against, verdict in verdicts.items():
        print(f"WINGS against {against}, retention: " + ", ".join(f"{k} {v}" for k, v in verdict.items()))
    print(f"after align, text-only outputs identical to the base LLM: {_yes(identity['identical'])}")
    print(f"\nwrote {out / 'report.md'}, {out / 'results.json'} and {', '.join(p.name for p in plots.values())}")
    print(f"timings (s): {pipeline.timings}")
    print(f"\nChat with the trained model:\n    {chat_command(pipeline)}")
    return report


def chat_command(pipeline: FinishedRun) -> str:
    """The `wings chat` command for the trained model (`.venv/bin/wings` when the environment is not activated)."""
    image = pipeline.data_dir / "images" / "test" / "0.png"
    return f"{wings_command()} chat --model {pipeline.out / 'wings-instruct'} --image {image}"


def _yes(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


# The blind baselines under the accuracy table: what answering without looking at the image scores.
PRIOR_TEXT = {
    "answer_prior": "answer-prior baseline (always the most frequent training answer per question type)",
    "question_prior": "question-prior baseline (the most frequent training answer of the same question; "
    "a model that never looks at the image can learn this much)",
}


BASE_FOOTNOTE = (
    "Base LLM row: the base LLM has no vision tower and sees the easy-vqa question text alone, so its "
    "easy-vqa columns (0.0 when its free-text answers never match easy-vqa's words) say what the text "
    "gives without an image, not how well it sees."
)


def short_run_note(settings: DemoSettings) -> str | None:
    """For runs shorter than the default preset (`--quick`): what they check and what they cannot show."""
    default = DemoSettings.default()
    if settings.align_steps >= default.align_steps and settings.instruct_steps >= default.instruct_steps:
        return None
    return (
        f"This run trains {settings.align_steps} + {settings.instruct_steps} steps, fewer than the default "
        f"preset's {default.align_steps} + {default.instruct_steps} (`--quick`): it checks that the pipeline runs "
        "end to end, not the method. Its models are far from converged, so accuracies at or below the question "
        "prior and ties between models are expected; `wings demo` without --quick measures the method."
    )


def _markdown(
    pipeline: FinishedRun, table: str, priors: dict, verdicts: dict, identity: dict, spread: dict | None = None
) -> str:
    s = pipeline.settings
    tower = "trained from scratch in stage 1" if is_scratch_preset(s.vision) else "pretrained, frozen"
    seeds = f"; {s.seeds} seeds ({s.seed}..{s.seed + s.seeds - 1}), mean ± standard deviation" if s.seeds > 1 else ""
    lines = [
        "# wings demo",
        "",
        f"SmolLM2 LLM `{s.llm}` + vision tower `{s.vision}` ({tower}), easy-vqa conversations of up to "
        f"{s.max_turns} question(s), max_length {s.max_length}, batch {s.batch_size}; stage 1 {s.align_steps} steps, "
        f"stage 2 {s.instruct_steps} steps for every model; LoRRA rank {s.lorra_rank}{seeds}.",
        "",
        "## Summary",
        "",
        *([f"**{short_run_note(s)}**", ""] if short_run_note(s) else []),
        table,
        "",
        BASE_FOOTNOTE,
        "",
        f"Accuracies in percent on {s.vqa_limit or 'all'} easy-vqa test questions (a seeded sample), with 95% "
        "intervals in brackets; image swap: the share of answers that change when the question is asked about "
        f"another image of another shape and colour (the first {s.swap_limit or 'all'} of those questions that have "
        "such an image; a model that does not look scores 0), and among the open ones, whose right answer always "
        "changes; retention: "
        f"`retention_mc` accuracy ({s.retention_limit or 'all'} questions), KL(base || model) per token and perplexity "
        "on the base LLM's greedy continuations (`retention_lm`); attention shift = 1 - pearson(LAWS_before, "
        "LAWS_after), n/a for the base LLM, which sees no image (WINGS.md).",
        "",
    ]
    if spread and any(spread.values()):  # empty with one seed: no spread to compare against
        lines += [
            "WINGS against each baseline, difference of the means against the sum of the seed standard deviations:",
            "",
        ]
        for against, verdict in spread.items():
            lines.append(f"- {against}: " + ", ".join(f"{k} {v}" for k, v in verdict.items()))
        lines.append("")
    for kind, prior in priors.items():
        if prior:
            lines += [
                f"{PRIOR_TEXT[kind][0].upper()}{PRIOR_TEXT[kind][1:]}: acc {100 * prior['acc']:.1f}, "
                f"yes/no {100 * prior['acc_yes_no']:.1f}, open {100 * prior['acc_open']:.1f}.",
                "",
            ]
    lines += ["## Retention: WINGS against each baseline (better = higher MC accuracy, lower KL, lower perplexity)", ""]
    for against, verdict in verdicts.items():
        lines.append(f"- against {against}: " + ", ".join(f"{k} {v}" for k, v in verdict.items()))
    lines += [
        "",
        f"After align, text-only: max |logit difference| to the base LLM {identity['max_abs_logit_diff']:.3g}, "
        f"identical greedy continuations {identity['identical_greedy']}/{identity['prompts']}.",
        "",
        "## Learning rates",
        "",
    ]
    for run in model_runs_of(pipeline):
        lines.append(f"- {run.name}: {run.align[0]} {run.align[2]}; {run.instruct[0]} {run.instruct[2]}")
    lines += [
        "",
        "## Figures",
        "",
        "![training curves](training_curves.png)",
        "",
        "![forgetting](forgetting.png)",
        "",
        "![LAWS curves](laws.png)",
        "",
        "## Full evaluation",
        "",
        (pipeline.out / "eval" / "results.md").read_text().removeprefix("# Evaluation\n\n"),
        "",
        f"Seconds per step (`timings.json`, over the runs that did each step): {pipeline.timings}",
        "",
        f"Intra-op threads of the steps run this time (measured before each step unless `--threads`): "
        f"{pipeline.threads or 'none run'}",
        "",
        "Machine speed before each step run this time (a float32 matrix product, GFLOPS at the step's threads; the "
        f"same code runs slower when this is lower): {pipeline.speed or 'none run'}",
        "",
        "## Chat",
        "",
        f"    {chat_command(pipeline)}",
        "",
    ]
    return "\n".join(lines)


def model_runs_of(pipeline: FinishedRun) -> list[ModelRun]:
    return model_runs(pipeline.settings)
