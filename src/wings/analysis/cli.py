"""`wings analyze`: analyses of trained models.

    wings analyze attention-shift --model runs/wings --model runs/llava --model smollm2-135m-instruct \\
        --data samples.jsonl --out runs/analysis
    wings analyze attention-shift --model ckpt-1000 --model ckpt-2000 --model ckpt-3000 --data samples.jsonl \\
        --out runs/analysis --eval-results runs/eval/results.json --score-task arc_easy

`--data` is JSONL, one sample a line, either `{"text": "before <image> after", "image": "cat.jpg"}` (the
text is used as written: put any chat template in it) or a LLaVA / messages conversation with one `<image>`
(rendered with the tokenizer's chat template when it has one). Images resolve against the file's folder.
WINGS models and LLaVA-style baselines see before + image + after; base LLMs see before + after (the
image removed), so their V_itself proportion is 0.

Writes to --out: attention_shift.json (everything, per sample too), laws.png/.json, and, with scores for
two or more models, shift_vs_score.png/.json (the paper's figure 2c).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from wings.analysis.attention_shift import QUERY_CHOICES, QUERY_TOKENS, AnalysisSample, analyze_model
from wings.threads import add_threads_argument

IMAGE_PLACEHOLDER = "<image>"


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """Register `wings analyze` and its subcommands."""
    parser = subparsers.add_parser(name, help=help_text, description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    analyses = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    shift = analyses.add_parser("attention-shift", help="LAWS curves and attention shift per model",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    shift.add_argument("--model", action="append", required=True,
                       help="WINGS checkpoint, registry name or HF causal LM (repeatable)")  # fmt: skip
    shift.add_argument("--data", type=Path, required=True, help="JSONL samples with text before and after one image")
    shift.add_argument("--out", type=Path, required=True, help="output folder")
    shift.add_argument("--image-folder", type=Path, help="where relative image paths point (default: --data's folder)")
    shift.add_argument("--limit", type=int, help="only the first N samples")
    shift.add_argument("--query-tokens", choices=QUERY_CHOICES, default=QUERY_TOKENS,
                       help="queries summed over: all (WINGS.md; default) or after (text after the image)")  # fmt: skip
    shift.add_argument("--eval-results", type=Path, help="a `wings eval` results.json giving each model's text score")
    shift.add_argument("--score-task", help="the task of --eval-results to read (e.g. arc_easy)")
    shift.add_argument("--score-metric", default="acc", help="the metric of that task (default acc)")
    shift.add_argument("--score", action="append", default=[], metavar="MODEL=VALUE",
                       help="a model's text score given directly (repeatable; overrides --eval-results)")  # fmt: skip
    shift.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    shift.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    add_threads_argument(shift)
    shift.set_defaults(func=run_attention_shift)


# ------------------------------------------------------------------------------------------------ data
def read_records(path: Path) -> list[dict[str, Any]]:
    """JSON objects, one a line; errors name the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"--data {path} does not exist")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from error
    return records


def sample_texts(path: Path, tokenizer: Any, image_folder: Path | None = None) -> list[tuple[str, str, str, str]]:
    """(id, text before, text after, image path) per sample; one `<image>` each, text on both sides."""
    from wings.data.formats import normalize_record, resolve_image

    folder = image_folder or path.parent
    out = []
    for index, record in enumerate(read_records(path)):
        where = f"{path} sample {index + 1}"
        if "text" in record:
            text, images = record["text"], record.get("image")
            images = [images] if isinstance(images, str) else list(images or [])
            images = [resolve_image(image, folder) for image in images]
        else:
            conversation = normalize_record(record, folder, str(path), index)
            messages, images = conversation.to_chat(), conversation.images
            if getattr(tokenizer, "chat_template", None):
                text = tokenizer.apply_chat_template(messages, tokenize=False)
            else:
                text = "\n".join(message["content"] for message in messages)
        if text.count(IMAGE_PLACEHOLDER) != 1 or len(images) != 1:
            raise ValueError(f"{where}: needs exactly one {IMAGE_PLACEHOLDER} and one image "
                             f"(found {text.count(IMAGE_PLACEHOLDER)} placeholders, {len(images)} images)")  # fmt: skip
        before, after = text.split(IMAGE_PLACEHOLDER)
        if not before.strip() or not after.strip():
            raise ValueError(f"{where}: the attention shift needs text both before and after {IMAGE_PLACEHOLDER}")
        out.append((str(record.get("id", index)), before, after, images[0]))
    return out


def tokenize_samples(texts: list[tuple[str, str, str, str]], tokenizer: Any) -> list[AnalysisSample]:
    """Before and after are tokenised apart (the boundary is exact); BOS, if any, goes before the first part."""
    return [
        AnalysisSample(tokenizer.encode(before), tokenizer.encode(after, add_special_tokens=False), image, sample_id)
        for sample_id, before, after, image in texts
    ]


def model_scores(args: argparse.Namespace) -> dict[str, float]:
    """Text scores per model name from --eval-results / --score."""
    scores: dict[str, float] = {}
    if args.eval_results is not None:
        if not args.score_task:
            raise ValueError("--eval-results needs --score-task (which task's score to plot)")
        results = json.loads(args.eval_results.read_text(encoding="utf-8"))
        for name, tasks in results.get("models", {}).items():
            metrics = tasks.get(args.score_task)
            if metrics and args.score_metric in metrics:
                scores[name] = float(metrics[args.score_metric])
    for entry in args.score:
        name, separator, value = entry.rpartition("=")
        if not separator:
            raise ValueError(f"--score {entry!r}: write MODEL=VALUE")
        scores[name] = float(value)
    return scores


# ------------------------------------------------------------------------------------------------ run
def load_processor(entry: Any, name: str) -> Any:
    """The image preprocessing of a WINGS checkpoint (None for text-only models)."""
    model = entry.model
    if getattr(model, "vision_tower", None) is None:
        return None
    from wings.model.processing_wings import WingsProcessor

    path = Path(name)
    try:
        return WingsProcessor.from_pretrained(path)
    except Exception:  # older checkpoints: rebuild it from the config and the tokenizer
        return WingsProcessor.from_model_config(entry.tokenizer, model.config,
                                                image_processor_path=path if path.is_dir() else None)  # fmt: skip


def run_attention_shift(args: argparse.Namespace) -> int:
    """Analyse every model on the same samples; write JSON and plots."""
    from wings.analysis.plots import plot_laws, plot_shift_vs_score
    from wings.evaluation.runner import load_eval_model

    scores = model_scores(args)
    dtype = getattr(torch, args.dtype)
    results: dict[str, Any] = {"data": str(args.data), "query_tokens": args.query_tokens, "models": {}}
    for name in args.model:
        entry = load_eval_model(name, dtype=dtype, device=args.device)
        texts = sample_texts(args.data, entry.tokenizer, args.image_folder)[: args.limit]
        samples = tokenize_samples(texts, entry.tokenizer)
        analysis = analyze_model(entry.model, samples, load_processor(entry, name), args.query_tokens)
        results["models"][name] = analysis
        shift = analysis["attention_shift"]
        shown = "n/a (the model sees no image)" if shift is None else f"{shift:.4f}"
        print(f"{name}: attention shift {shown} over {analysis['num_samples']} samples")
        del entry
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention_shift.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    png, _ = plot_laws({name: r["laws"] for name, r in results["models"].items()}, args.out / "laws.png")
    print(f"wrote {args.out / 'attention_shift.json'} and {png}")
    scored = {name: (r["attention_shift"], scores[name]) for name, r in results["models"].items()
              if name in scores and r["attention_shift"] is not None}  # fmt: skip
    if len(scored) >= 2:
        label = f"{args.score_task} {args.score_metric}" if args.score_task else "text score"
        png, _, correlation = plot_shift_vs_score(scored, args.out / "shift_vs_score.png", label)
        print(f"wrote {png} (Pearson r = {correlation:.3f} over {len(scored)} models)")
    elif scores:
        print(f"the shift/score scatter needs two or more scored models that see images; {len(scored)} given "
              "(a model without an image has no attention shift)")  # fmt: skip
    return 0
