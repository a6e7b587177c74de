"""`wings analyze`: analyses of trained models.

    wings analyze attention-shift --model runs/wings --model runs/llava --model smollm2-135m-instruct \\
        --data samples.jsonl --out runs/analysis
    wings analyze attention-shift --model ckpt-1000 --model ckpt-2000 --model ckpt-3000 --data samples.jsonl \\
        --out runs/analysis --eval-results runs/eval/results.json --score-task arc_easy

`--data` is JSONL, one sample a line, either `{"text": "before <image> after", "image": "cat.jpg"}` (the
text is used as written: put any chat template in it) or a LLaVA / messages conversation with `<image>`
(rendered with the tokenizer's chat template when it has one). Images resolve against the file's folder.
WINGS models and LLaVA-style baselines see before + image + after; base LLMs see before + after (the
image removed), so their V_itself curve is 0 and they have no attention shift (n/a, never 2). A sample with
several images is analysed with a warning: the text between images belongs to no segment.

Writes to --out: attention_shift.json (everything, per sample too), laws.png/.json, and, with scores for
two or more models, shift_vs_score.png/.json (the paper's figure 2c).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wings.analysis.attention_shift import QUERY_CHOICES, QUERY_TOKENS, AnalysisSample, analyze_model
from wings.analysis.plots import plot_laws, plot_shift_vs_score
from wings.data.formats import IMAGE_PLACEHOLDER, normalize_record, read_jsonl, resolve_image
from wings.evaluation.runner import load_eval_model
from wings.model.processing_wings import WingsProcessor
from wings.threads import add_threads_argument


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """Register `wings analyze` and its subcommands."""
    parser = subparsers.add_parser(
        name, help=help_text, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    analyses = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    shift = analyses.add_parser(
        "attention-shift",
        help="LAWS curves and attention shift per model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    shift.add_argument(
        "--model", action="append", required=True, help="WINGS checkpoint, registry name or HF causal LM (repeatable)"
    )
    shift.add_argument("--data", type=Path, required=True, help="JSONL samples with text before and after one image")
    shift.add_argument("--out", type=Path, required=True, help="output folder")
    shift.add_argument("--image-folder", type=Path, help="where relative image paths point (default: --data's folder)")
    shift.add_argument("--limit", type=int, help="only the first N samples")
    shift.add_argument(
        "--query-tokens",
        choices=QUERY_CHOICES,
        default=QUERY_TOKENS,
        help="queries summed over: all (WINGS.md; default) or after (text after the image)",
    )
    shift.add_argument("--eval-results", type=Path, help="a `wings eval` results.json giving each model's text score")
    shift.add_argument("--score-task", help="the task of --eval-results to read (e.g. arc_easy)")
    shift.add_argument("--score-metric", default="acc", help="the metric of that task (default acc)")
    shift.add_argument(
        "--score",
        action="append",
        default=[],
        metavar="MODEL=VALUE",
        help="a model's text score given directly (repeatable; overrides --eval-results)",
    )
    shift.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    shift.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    add_threads_argument(shift)
    shift.set_defaults(func=run_attention_shift)


# ------------------------------------------------------------------------------------------------ data
def read_records(path: Path) -> list[dict[str, Any]]:
    """JSON objects, one a line; errors name the file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"--data {path} does not exist")
    return read_jsonl(path)


@dataclass(frozen=True)
class SampleText:
    """A sample's text cut at its image placeholders: `pieces` has one more entry than `images`."""

    id: str
    pieces: list[str]
    images: list[str]


def sample_texts(
    path: Path, tokenizer: Any, image_folder: Path | None = None, processor: Any = None
) -> list[SampleText]:
    """Each sample's text cut at its `<image>` placeholders, with its images; text before the first image and
    after the last one is required (several images are allowed: the text between them is in no segment).
    Conversations are rendered by a WINGS model's processor when given (its system prompt as in training), else
    by the tokenizer's chat template."""
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
            if processor is not None:
                text = processor.render(messages)
            elif getattr(tokenizer, "chat_template", None):
                text = tokenizer.apply_chat_template(messages, tokenize=False)
            else:
                text = "\n".join(message["content"] for message in messages)
        placeholders = text.count(IMAGE_PLACEHOLDER)
        if placeholders == 0 or placeholders != len(images):
            raise ValueError(
                f"{where}: needs at least one {IMAGE_PLACEHOLDER} and one image per placeholder "
                f"(found {placeholders} placeholders, {len(images)} images)"
            )
        pieces = text.split(IMAGE_PLACEHOLDER)
        if not pieces[0].strip() or not pieces[-1].strip():
            raise ValueError(
                f"{where}: the attention shift needs text both before the first and after the last {IMAGE_PLACEHOLDER}"
            )
        out.append(SampleText(str(record.get("id", index)), pieces, images))
    return out


def tokenize_samples(texts: list[SampleText], tokenizer: Any) -> list[AnalysisSample]:
    """Pieces are tokenised apart (the boundaries are exact); BOS, if any, goes before the first piece."""
    samples = []
    for text in texts:
        rest = [tokenizer.encode(piece, add_special_tokens=False) for piece in text.pieces[1:]]
        between = list(zip(rest[:-1], text.images[1:]))
        samples.append(AnalysisSample(tokenizer.encode(text.pieces[0]), rest[-1], text.images[0], text.id, between))
    return samples


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
    path = Path(name)
    try:
        return WingsProcessor.from_pretrained(path)
    except Exception:  # older checkpoints: rebuild it from the config and the tokenizer
        return WingsProcessor.from_model_config(
            entry.tokenizer, model.config, image_processor_path=path if path.is_dir() else None
        )


def shift_summary(analysis: dict[str, Any]) -> str:
    """One line: the shift (n/a for a model that sees no image) and the samples it leaves out or warns about."""
    shift, total = analysis["attention_shift"], analysis["num_samples"]
    if shift is None:
        line = f"attention shift n/a (the model sees no image) over {total} samples"
    else:
        used = total - analysis["num_undefined_shift"]
        line = f"attention shift {shift:.4f} over {used} of {total} samples"
        if analysis["num_undefined_shift"]:
            line += f"; {analysis['num_undefined_shift']} left out (a constant LAWS curve: no correlation)"
    if analysis.get("num_multi_image"):
        line += f"; {analysis['num_multi_image']} with several images (text between them in no segment)"
    return line


def run_attention_shift(args: argparse.Namespace) -> int:
    """Analyse every model on the same samples; write JSON and plots."""
    scores = model_scores(args)
    dtype = getattr(torch, args.dtype)
    results: dict[str, Any] = {"data": str(args.data), "query_tokens": args.query_tokens, "models": {}}
    for name in args.model:
        entry = load_eval_model(name, dtype=dtype, device=args.device)
        processor = load_processor(entry, name)
        texts = sample_texts(args.data, entry.tokenizer, args.image_folder, processor)[: args.limit]
        samples = tokenize_samples(texts, entry.tokenizer)
        analysis = analyze_model(entry.model, samples, processor, args.query_tokens)
        results["models"][name] = analysis
        print(f"{name}: {shift_summary(analysis)}")
        del entry
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention_shift.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    png, _ = plot_laws({name: r["laws"] for name, r in results["models"].items()}, args.out / "laws.png")
    print(f"wrote {args.out / 'attention_shift.json'} and {png}")
    scored = {
        name: (r["attention_shift"], scores[name])
        for name, r in results["models"].items()
        if name in scores and r["attention_shift"] is not None
    }
    if len(scored) >= 2:
        label = f"{args.score_task} {args.score_metric}" if args.score_task else "text score"
        png, _, correlation = plot_shift_vs_score(scored, args.out / "shift_vs_score.png", label)
        print(f"wrote {png} (Pearson r = {correlation:.3f} over {len(scored)} models)")
    elif scores:
        print(
            f"the shift/score scatter needs two or more scored models that see images; {len(scored)} given "
            "(a model without an image has no attention shift)"
        )
    return 0
