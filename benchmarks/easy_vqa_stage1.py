"""What WINGS' stage 1 learns from easy-vqa in the demo's budget, by question kind (docs/results/demo.md).

Trains the demo's stage 1 (`align`: SmolLM2-135M-Instruct frozen, the tower (`--vision`, default the pretrained
EfficientNet-Lite0, frozen; a from-scratch preset is trained), projector and visual learners) in a plain loop:
AdamW, cosine schedule after 3% warmup, clip 1.0, batch 8 of one question each. Then it scores the first test
questions by the answer the model ranks first among easy-vqa's 13 (teacher-forced: one forward pass, no
generation), per kind: yes/no, colour, shape.

    python -m benchmarks.easy_vqa_stage1 --data runs/demo/data/easy-vqa --train-file align.json --loraplus-ratio 10 \
        --steps 200 --eval-every 100                                          # the demo's stage 1
    python -m benchmarks.easy_vqa_stage1 --data DIR --steps 150 --eval-every 50   # on easy-vqa's own mix
    python -m benchmarks.easy_vqa_stage1 --data DIR --vision siglip-scratch-32 --kinds colour --loraplus-ratio 10 \
        --image-normalization data                                            # the from-scratch tower
    python -m benchmarks.easy_vqa_stage1 --data DIR --vision siglip-scratch-32 --kinds colour --solid-images
    python -m benchmarks.easy_vqa_stage1 --data DIR --caption-baseline   # the frozen base LLM on yes/no, given
                                                                         # the true caption as text

`--data` is a folder written by `wings data easy-vqa --max-turns 1`. 1.2-3.5 s a step on 2 cores (quiet / shared).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wings.data.collator import WingsCollator
from wings.data.dataset import ConversationDataset
from wings.data.easy_vqa import write_align_set
from wings.model.builder import build_wings
from wings.model.vision_towers import is_scratch_preset
from wings.model.registry import load_llm
from wings.training.run import set_image_statistics
from wings.training.stages import get_stage, prepare_model_for_stage
from wings.training.trainer import is_learner_up_projection

KINDS = ("yes/no", "colour", "shape")


def question_kind(question: str, answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    return "colour" if "color" in question else "shape"


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


def caption_baseline(data: Path, limit: int = 200) -> dict[str, float]:
    """The frozen base LLM on yes/no test questions, told the true caption first ("The image shows a red circle.")
    and asked to answer yes or no: can it make the comparison a yes/no question needs, without any image?"""
    model, tokenizer = load_llm("smollm2-135m-instruct")
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
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                 add_generation_prompt=True)  # fmt: skip
            logits = model(tokenizer(text, return_tensors="pt").input_ids).logits[0, -1]
            answer = "yes" if logits[yes].max() > logits[no].max() else "no"
            right += answer == q["answer"]
            said_yes += answer == "yes"
    return {"questions": len(asked), "accuracy": round(100 * right / len(asked), 1),
            "answered yes": round(100 * said_yes / len(asked), 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="`wings data easy-vqa --max-turns 1` output")
    parser.add_argument("--out", type=Path, default=Path("runs/easy-vqa-stage1"), help="scratch folder")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="every trained group (the demo's)")
    parser.add_argument("--loraplus-ratio", type=float, default=1.0, help="the learners' B projections' multiple")
    parser.add_argument("--image-normalization", choices=("tower", "data"), default="tower")
    parser.add_argument("--kinds", default=",".join(KINDS), help="question kinds trained on (comma-separated)")
    parser.add_argument("--solid-images", action="store_true", help="fill each image with its shape's colour")
    parser.add_argument("--all-kinds-after", type=int, help="from this step on, train on every kind of question")
    parser.add_argument("--caption-baseline", action="store_true", help="score the base LLM on yes/no questions, "
                        "given the true caption as text; no training")  # fmt: skip
    parser.add_argument("--test-questions", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vision", default="efficientnet-lite0-in1k",
                        help="tower preset (a from-scratch one is trained, a pretrained one frozen)")
    parser.add_argument("--feature-layer", type=int, help="the tower's hidden state read by the projector")
    parser.add_argument("--train-file", default="train.json",
                        help="training conversations in --data: train.json (easy-vqa's mix) or align.json (the "
                             "demo's stage-1 set, `write_align_set`)")
    args = parser.parse_args()
    needed = ("train.json", "test_questions.jsonl", "answers.json")
    missing = [name for name in needed if not (args.data / name).is_file()]
    if missing:
        parser.error(f"--data {args.data} has no {', '.join(missing)}: write it with "
                     f"`wings data easy-vqa --out {args.data} --max-turns 1`")  # fmt: skip
    unknown = set(args.kinds.split(",")) - set(KINDS)
    if unknown:
        parser.error(f"--kinds: unknown {sorted(unknown)}; choose from {', '.join(KINDS)}")
    if args.steps < 1 or args.batch_size < 1 or args.loraplus_ratio <= 0:
        parser.error("--steps and --batch-size must be at least 1, --loraplus-ratio positive")
    if args.caption_baseline:
        print(f"base LLM, true caption as text, yes/no questions: {caption_baseline(args.data, args.test_questions)}")
        return
    torch.manual_seed(args.seed)
    data = solid_copy(args.data, args.out / "solid") if args.solid_images else args.data

    stage = get_stage("align")
    model, processor = build_wings("smollm2-135m-instruct", args.vision, learners=stage.learners, lorra_rank=8,
                                   vision_feature_layer=args.feature_layer)
    scratch = is_scratch_preset(args.vision)
    prepare_model_for_stage(model, stage, train_vision_tower=scratch)
    if not scratch:
        model.enable_vision_feature_cache()  # frozen: each image's features once
    groups = []
    for group, named in model.parameter_groups().items():
        trained = [(name, p) for name, p in named if p.requires_grad]
        up = [p for name, p in trained if is_learner_up_projection(group, name)]
        rest = [p for name, p in trained if not is_learner_up_projection(group, name)]
        groups += [{"params": up, "lr": args.learning_rate * args.loraplus_ratio}] if up else []
        groups += [{"params": rest, "lr": args.learning_rate}] if rest else []
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]

    args.out.mkdir(parents=True, exist_ok=True)
    if args.train_file == "align.json" and not (data / "align.json").is_file():
        write_align_set(data, seed=args.seed)
    every = json.loads((data / args.train_file).read_text())

    def training_set(kinds: set[str], name: str, seed: int) -> ConversationDataset:
        turns = [record["conversations"] for record in every]
        records = [r for r, t in zip(every, turns) if question_kind(t[0]["value"], t[1]["value"]) in kinds]
        random.Random(seed).shuffle(records)
        (args.out / name).write_text(json.dumps(records))
        return ConversationDataset(args.out / name, processor, image_folder=data, max_length=64)

    dataset = training_set(set(args.kinds.split(",")), "train.json", args.seed)
    later = training_set(set(KINDS), "train-all.json", args.seed + 1) if args.all_kinds_after is not None else None
    if args.image_normalization == "data":
        set_image_statistics(processor, [dataset])

    answers = json.loads((data / "answers.json").read_text())["answers"]
    first_token = torch.tensor([processor.tokenizer(a, add_special_tokens=False).input_ids[0] for a in answers])
    lines = (data / "test_questions.jsonl").read_text().splitlines()[: args.test_questions]
    test = [json.loads(line) for line in lines]

    def evaluate() -> dict[str, float]:
        model.eval()
        right: dict[str, list[bool]] = {kind: [] for kind in KINDS}
        with torch.no_grad():
            for start in range(0, len(test), 50):
                chunk = test[start : start + 50]
                samples = [processor.encode_conversation([{"role": "user", "content": f"<image>\n{q['question']}"}],
                                                         [str(data / q["image"])], add_generation_prompt=True)
                           for q in chunk]  # fmt: skip
                batch = WingsCollator(processor.pad_token_id, padding_side="left")(samples)
                batch.pop("labels", None)
                ranked = model(**batch).logits[:, -1, first_token].argmax(-1)
                for question, choice in zip(chunk, ranked.tolist()):
                    kind = question_kind(question["question"], question["answer"])
                    right[kind].append(answers[choice] == question["answer"])
        model.train()
        scores = {kind: round(100 * sum(r) / len(r), 1) for kind, r in right.items() if r}
        scores["all"] = round(100 * sum(map(sum, right.values())) / len(test), 1)
        return scores

    collator = WingsCollator(processor.pad_token_id)
    warmup = max(1, int(0.03 * args.steps))
    model.train()
    started, losses = time.perf_counter(), []
    for step in range(args.steps):
        source = later if later is not None and step >= args.all_kinds_after else dataset
        batch = collator([source[(step * args.batch_size + j) % len(source)] for j in range(args.batch_size)])
        progress = (step - warmup) / max(1, args.steps - warmup)
        factor = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * progress))
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for group in groups for p in group["params"]], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if (step + 1) % 20 == 0:
            print(f"step {step + 1}: loss {sum(losses[-20:]) / 20:.3f}, {time.perf_counter() - started:.0f} s")
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            print(f"  step {step + 1}: {evaluate()}")
    switch = f", every kind from step {args.all_kinds_after}" if later is not None else ""
    print(f"| {args.steps} steps, kinds {args.kinds}{switch}, LoRA+ {args.loraplus_ratio:g}, pixels "
          f"{args.image_normalization}{', solid images' if args.solid_images else ''} | {json.dumps(evaluate())} |")


if __name__ == "__main__":
    main()
