"""What the demo's training stages teach on easy-vqa, by question kind (docs/results/demo.md).

Trains one stage through the project's trainer (`wings.training.run.run_stage`, as `wings train` and `wings demo`
do): by default the demo's stage 1 (`align`: SmolLM2-135M-Instruct frozen; the tower (`--vision`, default the
pretrained EfficientNet-Lite0, frozen; a from-scratch preset is trained), projector and visual learners at the
demo's rates), or with `--init-from` a stage 2 (`instruct`) from an earlier stage's output. Then it scores the first
test questions by the answer the model ranks first among easy-vqa's 13 (teacher-forced: one forward pass, no
generation), per kind: yes/no, colour, shape.

    python -m experiments.easy_vqa_stage1 --data runs/demo/data/easy-vqa --train-file align-45-15-40.json \\
        --loraplus-ratio 10 --bf16 --steps 350 --eval-every 350 --test-questions 1000   # the demo's stage 1
    python -m experiments.easy_vqa_stage1 --data DIR --steps 150 --eval-every 50   # on easy-vqa's own mix
    python -m experiments.easy_vqa_stage1 --data DIR --train-file align_balanced.json --loraplus-ratio 10 \
        --steps 300 --eval-every 100               # yes/no questions whose text predicts nothing
    python -m experiments.easy_vqa_stage1 --data DIR --init-from runs/demo/wings-align --steps 100 \\
        --rates '{"visual_learners": 1e-3, "textual_learners": 1e-3}'    # a stage 2 from the demo's stage 1
    python -m experiments.easy_vqa_stage1 --data DIR --vision siglip-scratch-32 --kinds colour --loraplus-ratio 10 \\
        --image-normalization data                                         # the from-scratch tower
    python -m experiments.easy_vqa_stage1 --data DIR --vision siglip-scratch-32 --kinds colour --solid-images
    python -m experiments.easy_vqa_stage1 --data DIR --caption-baseline   # the frozen base LLM on yes/no, given
                                                                          # the true caption as text
    python -m experiments.easy_vqa_stage1 --data DIR --init-from runs/demo/wings-align --yes-no-mode describe-first \\
        --train-file align_balanced.json --steps 300 --eval-every 100   # yes/no answered "red circle. no"
    python -m experiments.easy_vqa_stage1 --data DIR --init-from runs/demo/wings-align --yes-no-mode caption-turn \\
        --train-file align_balanced.json --steps 200 --eval-every 100   # a caption turn before each yes/no question
    python -m experiments.easy_vqa_stage1 --data DIR --train-file align_balanced.json --loraplus-ratio 10 --bf16 \\
        --steps 2700 --eval-every 300                # stage 1 in bf16, as the demo runs it on a CPU with AMX units
    python -m experiments.easy_vqa_stage1 --data DIR --train-file align_balanced.json --loraplus-ratio 10 --bf16 \\
        --null-key --steps 300 --eval-every 100      # learners that may attend to nothing (not the paper's)
    python -m experiments.easy_vqa_stage1 --data DIR --init-from runs/demo/wings-align --yes-no-mode caption-text \\
        --kinds yes/no --visual-learner-at answer    # the visual learner kept out of the question's words
    python -m experiments.easy_vqa_stage1 --data DIR --init-from runs/demo/wings-align --score-only \\
        --test-questions 500                         # score a saved model as it is

New models get the demo's empty system turn (`--template-system-prompt`: the chat template's default, as the rows
measured before the demo took the empty one).

`--data` is a folder written by `wings data easy-vqa --max-turns 1` (`wings demo` writes one under
runs/demo/data/easy-vqa). 1.2-3.5 s a stage-1 step on 2 cores (quiet / shared), about twice that in stage 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer

from experiments.easy_vqa_learner_positions import visual_learner_in_last_turn
from experiments.easy_vqa_null_key import attend_with_null_key
from experiments.easy_vqa_scoring import KINDS, KindScorer, ScoreEvery, image_labels, question_kind, training_questions
from experiments.easy_vqa_yes_no_modes import YES_NO_MODES, rewrite_yes_no
from wings.data.easy_vqa import align_file_name, write_align_set
from wings.demo.settings import SCRATCH_TOWER_RATE, WINGS_RATES
from wings.model import fused
from wings.model.modeling_wings import WingsForConditionalGeneration
from wings.model.processing_wings import WingsProcessor
from wings.model.registry import load_llm, resolve_llm
from wings.model.vision_towers import is_scratch_preset
from wings.training.arguments import build_config
from wings.training.run import run_stage

LLM = "smollm2-135m-instruct"  # the demo's
TURN_START = "<|im_start|>"  # a turn's first token in the demo LLM's chat template
# A stage 2's learning rates by stage: WINGS' (both learners and routers), the visual learner alone (the demo's
# ablation) or none (the LLaVA-style recipe's stage at WINGS' rates): which learner stands in the way, if one does.
STAGE2_RATES = {
    "instruct": WINGS_RATES["instruct"],
    "instruct-visual": {group: WINGS_RATES["instruct"][group] for group in ("projector", "visual_learners", "llm")},
    "llava-instruct": {group: WINGS_RATES["instruct"][group] for group in ("projector", "llm")},
}


def solid_copy(data: Path, out: Path) -> Path:
    """A copy of the data folder whose every image is filled with its shape's colour: the pixels farthest from
    the background (the top-left pixel), median per channel. What the model could learn if finding the small
    shape were free."""
    shutil.copytree(data, out, ignore=shutil.ignore_patterns("images"), dirs_exist_ok=True)
    for source in sorted((data / "images").rglob("*.png")):
        pixels = np.asarray(Image.open(source).convert("RGB")).astype(int)
        shape = np.abs(pixels - pixels[0, 0]).sum(-1) > 60
        colour = np.median(pixels[shape], 0) if shape.any() else pixels[0, 0]
        target = out / source.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.broadcast_to(colour.astype(np.uint8), pixels.shape).copy()).save(target)
    return out


def caption_baseline(data: Path, limit: int = 200, llm: str = LLM) -> dict[str, float]:
    """The frozen base LLM on yes/no test questions, told the true caption first ("The image shows a red circle.")
    and asked to answer yes or no: can it make the comparison a yes/no question needs, without any image?"""
    model, tokenizer = load_llm(llm)
    questions = [json.loads(line) for line in (data / "test_questions.jsonl").read_text().splitlines()]
    captions: dict[str, dict[str, str]] = {}
    for q in questions:
        if q["type"] == "open":
            captions.setdefault(q["image"], {})[question_kind(q["question"], q["answer"])] = q["answer"]
    asked = [q for q in questions if q["type"] == "yes/no" and len(captions.get(q["image"], {})) == 2][:limit]
    yes = [tokenizer(word, add_special_tokens=False).input_ids[0] for word in ("yes", "Yes")]
    no = [tokenizer(word, add_special_tokens=False).input_ids[0] for word in ("no", "No")]
    right, said_yes = 0, 0
    with torch.no_grad():
        for q in asked:
            caption = captions[q["image"]]
            prompt = f"The image shows a {caption['colour']} {caption['shape']}.\n{q['question']} Answer yes or no."
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            logits = model(tokenizer(text, return_tensors="pt").input_ids).logits[0, -1]
            answer = "yes" if logits[yes].max() > logits[no].max() else "no"
            right += answer == q["answer"]
            said_yes += answer == "yes"
    return {
        "questions": len(asked),
        "accuracy": round(100 * right / len(asked), 1),
        "answered yes": round(100 * said_yes / len(asked), 1),
    }


def balance_yes_no(by_text: dict[str, dict[str, list[Any]]], shuffler: random.Random) -> list[Any]:
    """From {question text: {"yes": [...], "no": [...]}}, as many yes as no items of every text (the rarer
    answer's count): a model trained on them gains nothing from the question text."""
    chosen: list[Any] = []
    for answers in by_text.values():
        size = min(len(answers["yes"]), len(answers["no"]))
        chosen += shuffler.sample(answers["yes"], size) + shuffler.sample(answers["no"], size)
    return chosen


def earlier_align_shares(data: Path) -> dict[str, float]:
    """The demo's stage-1 mix before `ALIGN_SHARES` (the rows of docs/results/demo.md that name align.json): every
    colour question, half the shape ones, as many yes/no; `write_align_set` with these shares writes that file."""
    counts = {kind: 0 for kind in KINDS}
    for _, question, answer in training_questions(data):
        counts[question_kind(question, answer)] += 1
    chosen = {"colour": counts["colour"], "shape": counts["shape"] // 2}
    chosen["yes/no"] = min(chosen["colour"] + chosen["shape"], counts["yes/no"])
    return {kind: count / sum(chosen.values()) for kind, count in chosen.items()}


def write_balanced_align_set(data: Path, seed: int = 0, name: str = "align_balanced.json") -> dict[str, int]:
    """`write_align_set` with the text prior taken away: every colour question, half the shape ones, and as many
    yes/no questions drawn from `balance_yes_no`'s pool. Conversations of one question (`--max-turns 1`)."""
    shuffler = random.Random(seed)
    open_questions: dict[str, list[dict[str, Any]]] = {"colour": [], "shape": []}
    by_text: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for record, question, answer in training_questions(data):
        kind = question_kind(question, answer)
        if kind == "yes/no":
            by_text.setdefault(question, {"yes": [], "no": []})[answer].append(record)
        else:
            open_questions[kind].append(record)
    pool = balance_yes_no(by_text, shuffler)
    shapes = shuffler.sample(open_questions["shape"], len(open_questions["shape"]) // 2)
    opened = len(open_questions["colour"]) + len(shapes)
    yes_no = shuffler.sample(pool, min(opened, len(pool)))
    chosen = open_questions["colour"] + shapes + yes_no
    shuffler.shuffle(chosen)
    (data / name).write_text(json.dumps(chosen))
    return {"colour": len(open_questions["colour"]), "shape": len(shapes), "yes/no": len(yes_no)}


def training_file(data: Path, train_file: str, kinds: set[str], out: Path, seed: int, mode: str = "plain") -> Path:
    """The conversations of `train_file` whose question is of one of `kinds`, shuffled, written under `out` (their
    yes/no questions posed as `mode` poses them: `rewrite_yes_no`)."""
    every = json.loads((data / train_file).read_text())
    records = [
        r for r in every if question_kind(r["conversations"][0]["value"], r["conversations"][1]["value"]) in kinds
    ]
    if mode != "plain":
        records = rewrite_yes_no(records, image_labels(data), mode)
    random.Random(seed).shuffle(records)
    path = out / "train.json"
    path.write_text(json.dumps(records))
    return path


def stage_config(args: argparse.Namespace, train_path: Path, image_folder: Path) -> dict[str, Any]:
    """The `wings train` configuration of the experiment's stage (the demo's settings unless a flag changes one)."""
    stage = args.stage if args.init_from else "align"
    rates = dict(STAGE2_RATES.get(stage, WINGS_RATES["align"])) | json.loads(args.rates or "{}")
    if args.init_from:
        model: dict[str, Any] = {"init_from": str(args.init_from)}
        if args.router_init_visual_weight is not None:  # the routers this stage creates
            model["router_init_visual_weight"] = args.router_init_visual_weight
    else:
        scratch = is_scratch_preset(args.vision)
        model = {
            "llm": args.llm,
            "vision": args.vision,
            "lorra_rank": args.lorra_rank,
            "train_vision_tower": scratch,
            "vision_feature_layer": args.feature_layer,
            "image_normalization": args.image_normalization,
            "system_prompt": None if args.template_system_prompt else "",
        }
        if args.bf16:  # the demo's stage 1 where the CPU has AMX units: the frozen LLM in bf16, its attention eager
            model["attn_implementation"] = "eager"
        if scratch:
            rates.setdefault("vision_tower", SCRATCH_TOWER_RATE)
    return {
        "stage": stage,
        "model": model,
        # the demo's 64 tokens; a caption turn before the question needs about 20 more
        "data": {
            "datasets": [{"path": str(train_path), "image_folder": str(image_folder)}],
            "max_length": 96 if args.yes_no_mode == "caption-turn" else 64,
            "group_by_length": not args.no_group_by_length,
        },
        "optim": {"learning_rates": rates, "loraplus_lr_ratio": args.loraplus_ratio},
        "training": {
            "output_dir": str(args.out / "model"),
            "max_steps": args.steps,
            "per_device_train_batch_size": args.batch_size,
            "logging_steps": 20,
            "save_strategy": "no",
            "report_to": "none",
            "use_cpu": not torch.cuda.is_available(),
            "seed": args.seed,
            "disable_tqdm": True,
            "bf16": args.bf16,
        },
    }


def learner_scope(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """Where the visual learner writes for this run: the paper's (every token after the image) or the answer turn."""
    if args.visual_learner_at != "answer":
        return contextlib.nullcontext()
    tokenizer = AutoTokenizer.from_pretrained(args.init_from or resolve_llm(args.llm))
    turn_start = tokenizer.convert_tokens_to_ids(TURN_START)
    if turn_start is None or turn_start == tokenizer.unk_token_id:
        raise ValueError(
            f"--visual-learner-at answer finds the answer turn by {TURN_START}, which this LLM's tokenizer does not "
            "have: use a model with a ChatML chat template (SmolLM2, Qwen2)"
        )
    return visual_learner_in_last_turn(turn_start)


def score_only(args: argparse.Namespace) -> dict[str, Any]:
    """The --init-from model's scores by kind, untrained further (the table row `main` prints, "scored as it is")."""
    model = WingsForConditionalGeneration.from_pretrained(args.init_from).eval()
    processor = WingsProcessor.from_pretrained(args.init_from)
    with learner_scope(args):
        scores = KindScorer(args.data, args.test_questions, args.yes_no_mode).score(model, processor)
    scope = ", visual learner in the answer turn" if args.visual_learner_at == "answer" else ""
    print(f"| {args.init_from}, scored as it is{scope} | {json.dumps(scores)} |")
    return {"scores": scores}


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="`wings data easy-vqa --max-turns 1` output")
    parser.add_argument("--out", type=Path, default=Path("runs/easy-vqa-stage1"), help="scratch folder (replaced)")
    parser.add_argument("--llm", default=LLM, help="LLM of a new model: registry name, hub id or directory")
    parser.add_argument("--init-from", type=Path, help="train stage 2 (instruct) from this stage's output folder")
    parser.add_argument(
        "--stage",
        choices=sorted(STAGE2_RATES),
        default="instruct",
        help="with --init-from: WINGS' stage 2, the visual learner alone (instruct-visual) or no learner at all "
        "(llava-instruct: the image tokens in the LLM's sequence only)",
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--rates",
        help="learning rates by group, JSON, over the demo's rates for the stage "
        f"(stage 1 {WINGS_RATES['align']}, stage 2 {WINGS_RATES['instruct']})",
    )
    parser.add_argument("--loraplus-ratio", type=float, default=1.0, help="the learners' B projections' multiple")
    parser.add_argument("--lorra-rank", type=int, default=8, help="rank of a new model's learners (the demo's)")
    parser.add_argument("--image-normalization", choices=("tower", "data"), default="tower")
    parser.add_argument("--kinds", default=",".join(KINDS), help="question kinds trained on (comma-separated)")
    parser.add_argument("--solid-images", action="store_true", help="fill each image with its shape's colour")
    parser.add_argument(
        "--caption-baseline",
        action="store_true",
        help="score the base LLM on yes/no questions, given the true caption as text; no training",
    )
    parser.add_argument(
        "--yes-no-mode",
        choices=YES_NO_MODES,
        default="plain",
        help='yes/no questions as they are; answers led by what the image shows ("red circle. no", scored by '
        'generation); after a caption turn ("what is in the image?" -> "red circle", captioned by the model when '
        'scored); with the true caption written before the question, the image still there ("caption-text"); or '
        "trained so and scored with the caption the model reads from the image (its answers to the colour and shape "
        'questions: "own-caption-text"), or with the caption of another image, wrong on colour and shape '
        '("other-caption-text"); the caption modes all train on the true caption',
    )
    parser.add_argument(
        "--template-system-prompt",
        action="store_true",
        help="a new model renders the chat template's default system prompt (default: the demo's empty one)",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="stage 1 in bf16 mixed precision, as the demo runs it on a CPU with AMX units (what trains stays float32)",
    )
    parser.add_argument(
        "--router-init-visual-weight",
        type=float,
        help="with --init-from: w_v of the routers the stage creates, where a token sees an image (default 0.9)",
    )
    parser.add_argument(
        "--no-group-by-length",
        action="store_true",
        help="batches drawn at random instead of grouped by length (the trainer's default groups them)",
    )
    parser.add_argument(
        "--null-key",
        action="store_true",
        help="every learner's softmax gets one more key, logit 0 and value 0, so that it can attend to nothing "
        "(an experiment: not the paper's learner, not the library's)",
    )
    parser.add_argument(
        "--visual-learner-at",
        choices=("all", "answer"),
        default="all",
        help="where the visual learner writes: every token after the image (the paper's), or the answer turn only "
        "(from its <|im_start|>; the question's words left as the LLM wrote them: an experiment)",
    )
    parser.add_argument(
        "--score-only",
        action="store_true",
        help="no training: score the --init-from model as it is (with --visual-learner-at, as that scope sees it)",
    )
    parser.add_argument("--test-questions", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--vision",
        default="efficientnet-lite0-in1k",
        help="tower preset (a from-scratch one is trained, a pretrained one frozen)",
    )
    parser.add_argument("--feature-layer", type=int, help="the tower's hidden state read by the projector")
    parser.add_argument(
        "--train-file",
        default="train.json",
        help="training conversations in --data: train.json (easy-vqa's mix), align-45-15-40.json (the demo's "
        "stage-1 set, `write_align_set`), align.json (the demo's earlier stage-1 set: every colour question, half "
        "the shape ones, as many yes/no) or align_balanced.json (that with yes/no questions whose text predicts "
        "nothing, `write_balanced_align_set`); each written when missing",
    )
    args = parser.parse_args(argv)
    needed = ("train.json", "test_questions.jsonl", "answers.json")
    missing = [name for name in needed if not (args.data / name).is_file()]
    if missing:
        parser.error(
            f"--data {args.data} has no {', '.join(missing)}: write it with "
            f"`wings data easy-vqa --out {args.data} --max-turns 1`"
        )
    unknown = set(args.kinds.split(",")) - set(KINDS)
    if unknown:
        parser.error(f"--kinds: unknown {sorted(unknown)}; choose from {', '.join(KINDS)}")
    if args.steps < 1 or args.batch_size < 1 or args.loraplus_ratio <= 0:
        parser.error("--steps and --batch-size must be at least 1, --loraplus-ratio positive")
    if args.bf16 and args.init_from is not None:
        parser.error("--bf16 is for a stage 1 (the LLM frozen); a stage 2 from --init-from trains in float32")
    if args.router_init_visual_weight is not None and args.init_from is None:
        parser.error("--router-init-visual-weight sets the routers a stage 2 creates: give --init-from")
    if args.router_init_visual_weight is not None and not 0 < args.router_init_visual_weight < 1:
        parser.error(
            f"--router-init-visual-weight must be in (0, 1) (a softmax weight), got {args.router_init_visual_weight}"
        )
    if args.score_only and args.init_from is None:
        parser.error("--score-only scores a trained model: give its folder with --init-from")
    if args.stage != "instruct" and args.init_from is None:
        parser.error(f"--stage {args.stage} is a stage 2: give the stage-1 model it starts from with --init-from")
    if args.init_from is not None and not (args.init_from / "config.json").is_file():
        parser.error(f"--init-from {args.init_from} holds no model (config.json)")
    try:
        rates = json.loads(args.rates or "{}")
    except json.JSONDecodeError as error:
        parser.error(f"--rates is not JSON ({error}); e.g. '{{\"visual_learners\": 1e-3}}'")
    if not isinstance(rates, dict) or not all(isinstance(v, (int, float)) for v in rates.values()):
        parser.error("--rates must map group names to numbers, e.g. '{\"visual_learners\": 1e-3}'")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_arguments(argv)
    if args.caption_baseline:
        result = caption_baseline(args.data, args.test_questions, args.llm)
        print(f"base LLM, true caption as text, yes/no questions: {result}")
        return result
    if args.score_only:
        return score_only(args)
    shutil.rmtree(args.out, ignore_errors=True)  # a scratch folder: a finished model there would be reused
    args.out.mkdir(parents=True)
    data = solid_copy(args.data, args.out / "solid") if args.solid_images else args.data
    if args.train_file == "align.json" and not (data / "align.json").is_file():
        write_align_set(data, seed=args.seed, name="align.json", shares=earlier_align_shares(data))
    if args.train_file == align_file_name() and not (data / args.train_file).is_file():
        write_align_set(data, seed=args.seed)
    if args.train_file == "align_balanced.json" and not (data / "align_balanced.json").is_file():
        write_balanced_align_set(data, seed=args.seed)
    kinds = set(args.kinds.split(","))
    train_path = training_file(data, args.train_file, kinds, args.out, args.seed, args.yes_no_mode)
    scorer = KindScorer(data, args.test_questions, args.yes_no_mode)
    every = ScoreEvery(scorer, args.eval_every)
    config = build_config(stage_config(args, train_path, data), "experiments.easy_vqa_stage1")
    library_attend = fused.attend
    if args.null_key:  # for this run only: the scores below read the same learners
        fused.attend = attend_with_null_key
    try:
        with learner_scope(args):
            run_stage(config, command="python -m experiments.easy_vqa_stage1", callbacks=[every])
    finally:
        fused.attend = library_attend
    final = every.final
    stage = f"stage 2 ({args.stage}) from {args.init_from}" if args.init_from else "stage 1"
    print(
        f"| {stage}, {args.steps} steps, kinds {args.kinds}, rates {config.optim.learning_rates}, LoRA+ "
        f"{args.loraplus_ratio:g}, pixels {args.image_normalization}{', solid images' if args.solid_images else ''}"
        f"{'' if args.yes_no_mode == 'plain' else ', yes/no ' + args.yes_no_mode}"
        f"{', bf16' if args.bf16 else ''}{', null key' if args.null_key else ''}"
        f"{', visual learner in the answer turn' if args.visual_learner_at == 'answer' else ''} "
        f"| {json.dumps(final)} |"
    )
    result = {"scores": final, "history": every.history, "learning_rates": config.optim.learning_rates}
    (args.out / "scores.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
