"""The demo's report: `results.json`, `report.md`, the PNG plots and the summary table printed at the end."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wings.demo.pipeline import DemoPipeline

# (column, task, metric, higher is better)
COLUMNS = [
    ("easy-vqa acc", "easyvqa", "acc", True),
    ("yes/no", "easyvqa", "acc_yes_no", True),
    ("open", "easyvqa", "acc_open", True),
    ("retention MC acc", "retention_mc", "acc", True),
    ("KL from base", "retention_lm", "kl", False),
    ("perplexity", "retention_lm", "perplexity", False),
]
RETENTION = [column for column in COLUMNS if column[1].startswith("retention")]


def _task_key(results: dict[str, Any], prefix: str) -> str | None:
    return next((task for task in results["tasks"] if task.startswith(prefix)), None)


def summary_rows(results: dict[str, Any], shifts: dict[str, float]) -> dict[str, dict[str, float | None]]:
    """{model: {column: value}} with the attention shift, from `wings eval`'s results."""
    rows: dict[str, dict[str, float | None]] = {}
    for name, scores in results["models"].items():
        row: dict[str, float | None] = {}
        for column, prefix, metric, _ in COLUMNS:
            task = _task_key(results, prefix)
            row[column] = scores.get(task, {}).get(metric) if task else None
        row["attention shift"] = shifts.get(name)
        rows[name] = row
    return rows


def _cell(column: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column == "KL from base":
        return f"{value:.2e}"
    if column in ("perplexity", "attention shift"):
        return f"{value:.4f}"
    return f"{100 * value:.1f}"


def markdown_summary(rows: dict[str, dict[str, float | None]]) -> str:
    columns = list(next(iter(rows.values())))
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(c, row[c]) for c in columns) + " |")
    return "\n".join(lines)


def retention_verdicts(rows: dict[str, dict[str, float | None]], model: str, against: str) -> dict[str, str]:
    """Per retention measure, `model` against `against`: "better" (higher MC accuracy, lower KL, lower
    perplexity), "worse", "tie" or "n/a" (a value is missing)."""
    verdicts: dict[str, str] = {}
    for column, _, _, higher in RETENTION:
        a, b = rows.get(model, {}).get(column), rows.get(against, {}).get(column)
        if a is None or b is None:
            verdicts[column] = "n/a"
        else:
            verdicts[column] = "tie" if a == b else ("better" if (a > b) == higher else "worse")
    return verdicts


def write_demo_report(pipeline: DemoPipeline) -> dict[str, Any]:
    """Write results.json, report.md and the plots under the demo folder; print the summary; return the numbers."""
    from wings.analysis.plots import plot_laws
    from wings.demo.pipeline import model_runs, settings_dict
    from wings.demo.plots import plot_forgetting, plot_training_curves

    out = pipeline.out
    results = json.loads((out / "eval" / "results.json").read_text())
    analysis = json.loads((out / "analysis" / "attention_shift.json").read_text())
    identity = json.loads((out / "eval" / "align_identity.json").read_text())
    shifts = {name: model["attention_shift"] for name, model in analysis["models"].items()}
    rows = summary_rows(results, shifts)
    vqa_task = _task_key(results, "easyvqa")
    priors = {kind: results["tasks"].get(vqa_task, {}).get(kind) if vqa_task else None
              for kind in ("answer_prior", "question_prior")}  # fmt: skip

    curves: dict[str, list] = {}
    for run in model_runs(pipeline.settings):
        for _, folder, _ in (run.align, run.instruct):
            log = out / folder / "loss_history.json"
            curves[folder] = json.loads(log.read_text()) if log.is_file() else []
    plots = {
        "training_curves": plot_training_curves(curves, out / "training_curves.png"),
        "forgetting": plot_forgetting({c: {n: r[c] for n, r in rows.items() if r[c] is not None} for c, *_ in RETENTION},
                                      out / "forgetting.png"),  # fmt: skip
        "laws": plot_laws({name: model["laws"] for name, model in analysis["models"].items()}, out / "laws.png")[0],
    }
    verdicts = {against: retention_verdicts(rows, "WINGS", against) for against in rows if against not in ("WINGS", "base LLM")}
    report = {
        "summary": rows,
        **priors,
        "retention_wings_better_than": verdicts,
        "align_text_identity": identity,
        "timings_s": pipeline.timings,
        "threads": pipeline.threads,
        "skipped_steps": pipeline.skipped,
        "settings": settings_dict(pipeline.settings),
        "chat": chat_command(pipeline),
        "plots": {name: str(path) for name, path in plots.items()},
        "evaluation": results,
        "attention_shift": analysis,
    }
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    table = markdown_summary(rows)
    (out / "report.md").write_text(_markdown(pipeline, table, priors, verdicts, identity))
    print("\n" + table + "\n" + BASE_FOOTNOTE)
    if short_run_note(pipeline.settings):
        print("\n" + short_run_note(pipeline.settings))
    for kind, prior in priors.items():
        if prior:
            print(f"\neasy-vqa {PRIOR_TEXT[kind]}: acc {100 * prior['acc']:.1f}, "
                  f"yes/no {100 * prior['acc_yes_no']:.1f}, open {100 * prior['acc_open']:.1f}", end="")  # fmt: skip
    print()
    for against, verdict in verdicts.items():
        print(f"WINGS against {against}, retention: " + ", ".join(f"{k} {v}" for k, v in verdict.items()))
    print(f"after align, text-only outputs identical to the base LLM: {_yes(identity['identical'])}")
    print(f"\nwrote {out / 'report.md'}, {out / 'results.json'} and {', '.join(p.name for p in plots.values())}")
    print(f"timings (s): {pipeline.timings}")
    print(f"\nChat with the trained model:\n    {chat_command(pipeline)}")
    return report


def chat_command(pipeline: DemoPipeline) -> str:
    image = pipeline.data_dir / "images" / "test" / "0.png"
    from wings.commands import wings_command  # `.venv/bin/wings` when the environment is not activated

    return f"{wings_command()} chat --model {pipeline.out / 'wings-instruct'} --image {image}"


def _yes(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


# The blind baselines under the accuracy table: what answering without looking at the image scores.
PRIOR_TEXT = {
    "answer_prior": "answer-prior baseline (always the most frequent training answer per question type)",
    "question_prior": "question-prior baseline (the most frequent training answer of the same question; "
                      "a model that never looks at the image can learn this much)",
}


BASE_FOOTNOTE = ("Base LLM row: the base LLM has no vision tower and sees the easy-vqa question text alone, so its "
                 "easy-vqa columns (0.0 when its free-text answers never match easy-vqa's words) say what the text "
                 "gives without an image, not how well it sees.")


def short_run_note(settings: Any) -> str | None:
    """For runs shorter than the default preset (`--quick`): what they check and what they cannot show."""
    from wings.demo.pipeline import DemoSettings

    default = DemoSettings.default()
    if settings.align_steps >= default.align_steps and settings.instruct_steps >= default.instruct_steps:
        return None
    return (f"This run trains {settings.align_steps} + {settings.instruct_steps} steps, fewer than the default "
            f"preset's {default.align_steps} + {default.instruct_steps} (`--quick`): it checks that the pipeline runs "
            "end to end, not the method. Its models are far from converged, so accuracies at or below the question "
            "prior and ties between models are expected; `wings demo` without --quick measures the method.")


def _markdown(pipeline: DemoPipeline, table: str, priors: dict, verdicts: dict, identity: dict) -> str:
    s = pipeline.settings
    lines = [
        "# wings demo", "",
        f"SmolLM2 LLM `{s.llm}` + vision tower `{s.vision}` (from scratch), easy-vqa conversations of up to "
        f"{s.max_turns} question(s), max_length {s.max_length}, batch {s.batch_size}; stage 1 {s.align_steps} steps, "
        f"stage 2 {s.instruct_steps} steps for every model; LoRRA rank {s.lorra_rank}.", "",
        "## Summary", "", *([f"**{short_run_note(s)}**", ""] if short_run_note(s) else []), table, "",
        BASE_FOOTNOTE, "",
        f"Accuracies in percent on the first {s.vqa_limit or 'all'} easy-vqa test questions; retention: "
        f"`retention_mc` accuracy ({s.retention_limit or 'all'} questions), KL(base || model) per token and perplexity "
        "on the base LLM's greedy continuations (`retention_lm`); attention shift = 1 - pearson(LAWS_before, "
        "LAWS_after) (the base LLM sees no image, so its value is 2 by construction).", "",
    ]  # fmt: skip
    for kind, prior in priors.items():
        if prior:
            lines += [f"{PRIOR_TEXT[kind][0].upper()}{PRIOR_TEXT[kind][1:]}: acc {100 * prior['acc']:.1f}, "
                      f"yes/no {100 * prior['acc_yes_no']:.1f}, open {100 * prior['acc_open']:.1f}.", ""]  # fmt: skip
    lines += ["## Retention: WINGS against each baseline (better = higher MC accuracy, lower KL, lower perplexity)", ""]
    for against, verdict in verdicts.items():
        lines.append(f"- against {against}: " + ", ".join(f"{k} {v}" for k, v in verdict.items()))
    lines += ["", f"After align, text-only: max |logit difference| to the base LLM {identity['max_abs_logit_diff']:.3g}, "
              f"identical greedy continuations {identity['identical_greedy']}/{identity['prompts']}.", "",
              "## Learning rates", ""]  # fmt: skip
    for run in model_runs_of(pipeline):
        lines.append(f"- {run.name}: {run.align[0]} {run.align[2]}; {run.instruct[0]} {run.instruct[2]}")
    lines += ["", "## Figures", "", "![training curves](training_curves.png)", "", "![forgetting](forgetting.png)", "",
              "![LAWS curves](laws.png)", "", "## Full evaluation", "",
              (pipeline.out / "eval" / "results.md").read_text().removeprefix("# Evaluation\n\n"), "",
              f"Seconds per step (`timings.json`, over the runs that did each step): {pipeline.timings}", "",
              f"Intra-op threads of the steps run this time (measured before each step unless `--threads`): "
              f"{pipeline.threads or 'none run'}", "", "## Chat", "", f"    {chat_command(pipeline)}", ""]  # fmt: skip
    return "\n".join(lines)


def model_runs_of(pipeline: DemoPipeline) -> list:
    from wings.demo.pipeline import model_runs

    return model_runs(pipeline.settings)
