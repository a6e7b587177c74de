"""Can the demo's LLM learn the comparison a yes/no question asks, when it reads what the image shows as text?

easy-vqa's yes/no questions ("is there a red shape?", "does the image not contain a circle?") need an equality
between a word of the question and a property of the image. `wings demo` shows its models do not learn it
(docs/results/demo.md). This experiment takes the image away: the whole LLM (SmolLM2-135M-Instruct) is fine-tuned
on the true caption followed by the question ("The image shows a red circle.\\nis there a blue shape?" -> "no"),
on training questions balanced so that every question text is answered yes and no equally often (the text alone
then predicts nothing), and scored on test yes/no questions by the larger of the "yes" / "no" logits. The
conversations use the demo's empty system turn.

    python -m experiments.easy_vqa_captions --data runs/demo/data/easy-vqa --steps 400 --eval-every 100
    python -m experiments.easy_vqa_captions --data runs/demo/data/easy-vqa --steps 200 --eval-every 50 \
        --layout caption-turn      # the caption as the answer to "what is in the image?", the question next turn

If the LLM learns the comparison from text in a few hundred steps, what the demo lacks is on the visual side (the
learners carry the colour to the answer, not in a form the LLM compares); if it does not, the comparison itself
needs the budget.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

import torch

from experiments.easy_vqa_probe import question_prior
from experiments.easy_vqa_scoring import image_labels, training_questions
from experiments.easy_vqa_stage1 import LLM, balance_yes_no
from experiments.easy_vqa_yes_no_modes import CAPTION_QUESTION
from wings.model.registry import load_llm


def captions(data: Path) -> dict[str, str]:
    """image -> "a red circle", for the images of both splits whose colour and shape are known."""
    return {image: f"a {labels['colour']} {labels['shape']}" for image, labels in image_labels(data).items()}


def balanced_training_questions(data: Path, seen: dict[str, str], seed: int) -> list[tuple[str, str, str]]:
    """(image, question, answer) of yes/no training questions with a caption, as many yes as no for every text."""
    by_text: dict[str, dict[str, list[tuple[str, str, str]]]] = {}
    for record, question, answer in training_questions(data):
        if answer in ("yes", "no") and record["image"] in seen:
            by_text.setdefault(question, {"yes": [], "no": []})[answer].append((record["image"], question, answer))
    shuffler = random.Random(seed)
    chosen = balance_yes_no(by_text, shuffler)
    shuffler.shuffle(chosen)
    return chosen


LAYOUTS = ("same-turn", "caption-turn")


def prompt(tokenizer: Any, caption: str, question: str, layout: str = "same-turn") -> str:
    """The caption and the question in one user turn, or (caption-turn) the caption as the assistant's answer to
    "what is in the image?" and the question in the next turn, as `easy_vqa_stage1 --yes-no-mode caption-turn`."""
    if layout == "caption-turn":
        turns = [
            {"role": "user", "content": CAPTION_QUESTION},
            {"role": "assistant", "content": caption.removeprefix("a ")},
            {"role": "user", "content": question},
        ]
    else:
        turns = [{"role": "user", "content": f"The image shows {caption}.\n{question}"}]
    messages = [{"role": "system", "content": ""}, *turns]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class YesNoScorer:
    """Accuracy on the first test yes/no questions (with a caption) by the larger of the yes / no logits."""

    def __init__(self, data: Path, seen: dict[str, str], tokenizer: Any, limit: int, layout: str = "same-turn") -> None:
        lines = [json.loads(line) for line in (data / "test_questions.jsonl").read_text().splitlines()]
        self.questions = [q for q in lines if q["type"] == "yes/no" and q["image"] in seen][:limit]
        self.prompts = [prompt(tokenizer, seen[q["image"]], q["question"], layout) for q in self.questions]
        self.tokenizer = tokenizer
        self.yes, self.no = (tokenizer(word, add_special_tokens=False).input_ids[0] for word in ("yes", "no"))

    @torch.no_grad()
    def score(self, model: Any, batch_size: int = 50) -> float:
        model.eval()
        right = 0
        self.tokenizer.padding_side = "left"
        for start in range(0, len(self.prompts), batch_size):
            batch = self.tokenizer(self.prompts[start : start + batch_size], return_tensors="pt", padding=True)
            logits = model(**batch).logits[:, -1]
            said = ["yes" if y > n else "no" for y, n in zip(logits[:, self.yes], logits[:, self.no])]
            right += sum(s == q["answer"] for s, q in zip(said, self.questions[start : start + batch_size]))
        model.train()
        return round(100 * right / len(self.questions), 1)


def train(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    model, tokenizer = load_llm(args.llm)
    seen = captions(args.data)
    samples = balanced_training_questions(args.data, seen, args.seed)
    scorer = YesNoScorer(args.data, seen, tokenizer, args.test_questions, args.layout)
    history = [{"step": 0, "yes/no": scorer.score(model)}]
    prior_answers = question_prior(args.data)
    prior = round(
        100 * sum(prior_answers.get(q["question"]) == q["answer"] for q in scorer.questions) / len(scorer.questions), 1
    )
    print(f"{len(samples)} balanced training questions; question prior {prior}; step 0: yes/no {history[0]['yes/no']}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    model.train()
    tokenizer.padding_side = "left"
    for step in range(1, args.steps + 1):
        chunk = [samples[((step - 1) * args.batch_size + i) % len(samples)] for i in range(args.batch_size)]
        texts = [prompt(tokenizer, seen[image], question, args.layout) for image, question, _ in chunk]
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        targets = torch.tensor([scorer.yes if answer == "yes" else scorer.no for _, _, answer in chunk])
        loss = torch.nn.functional.cross_entropy(model(**batch).logits[:, -1], targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % args.eval_every == 0 or step == args.steps:
            history.append({"step": step, "loss": round(loss.item(), 3), "yes/no": scorer.score(model)})
            print(f"  step {step}: {history[-1]}")
    return {
        "questions": len(scorer.questions),
        "question prior": prior,
        "lr": args.lr,
        "layout": args.layout,
        "history": history,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="`wings data easy-vqa --max-turns 1` output")
    parser.add_argument("--llm", default=LLM)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5, help="the whole LLM's (constant)")
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--test-questions", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="same-turn",
        help="the caption before the question in one user turn, or as the answer to a caption turn before it",
    )
    args = parser.parse_args(argv)
    if not (args.data / "train.json").is_file():
        parser.error(f"--data {args.data} has no train.json: write it with `wings data easy-vqa --out {args.data}`")
    if min(args.steps, args.batch_size, args.eval_every, args.test_questions) < 1 or args.lr <= 0:
        parser.error("--steps, --batch-size, --eval-every and --test-questions must be at least 1, --lr positive")
    result = train(args)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
