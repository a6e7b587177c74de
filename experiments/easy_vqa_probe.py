"""Does a trained model compute the answer to easy-vqa's yes/no questions anywhere inside, or not at all?

For each layer of the LLM, a logistic-regression probe reads the hidden state at the answer position (the last
prompt token) and predicts the right yes/no answer. Fitted on training questions, scored on test questions, beside
the question prior (the most frequent training answer of the same question) and the model's own answer (the larger
of its "yes" / "no" logits). A probe far above the prior where the model's answer is not: the comparison between
the question and the image is computed, the answer does not use it. A probe at the prior in every layer: the model
does not compute it.

With `--target colour` (or `shape`) the probes predict the image's colour (shape) from the same hidden states of the
same yes/no questions instead: whether what the image shows reaches the answer position of a yes/no question at
all, beside the most frequent class.

    python -m experiments.easy_vqa_probe --model runs/demo/wings-instruct --data runs/demo/data/easy-vqa
    python -m experiments.easy_vqa_probe --model runs/demo/wings-instruct --data runs/demo/data/easy-vqa --target colour
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from experiments.easy_vqa_scoring import image_labels
from wings.model.modeling_wings import WingsForConditionalGeneration
from wings.model.processing_wings import WingsCollator, WingsProcessor


def yes_no_questions(data: Path, split: str, limit: int) -> list[dict[str, str]]:
    """The first `limit` yes/no questions of a split: {"image", "question", "answer"}."""
    if split == "test":
        rows = [json.loads(line) for line in (data / "test_questions.jsonl").read_text().splitlines()]
        return [row for row in rows if row["answer"] in ("yes", "no")][:limit]
    questions = []
    for record in json.loads((data / "train.json").read_text()):
        question, answer = record["conversations"][0]["value"], record["conversations"][1]["value"]
        if answer in ("yes", "no"):
            questions.append(
                {"image": record["image"], "question": question.replace("<image>\n", ""), "answer": answer}
            )
    return questions[:limit]


def question_prior(data: Path) -> dict[str, str]:
    """The most frequent training answer of each yes/no question text."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for question in yes_no_questions(data, "train", 10**9):
        counts[question["question"]][question["answer"]] += 1
    return {text: count.most_common(1)[0][0] for text, count in counts.items()}


@torch.no_grad()
def answer_states(
    model: Any, processor: Any, data: Path, questions: list[dict[str, str]], chunk_size: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Hidden states at the answer position, (questions, layers + 1, hidden), and the model's own answers."""
    model.eval()
    yes, no = (processor.tokenizer(word, add_special_tokens=False).input_ids[0] for word in ("yes", "no"))
    states, answers = [], []
    for start in range(0, len(questions), chunk_size):
        chunk = questions[start : start + chunk_size]
        samples = [
            processor.encode_conversation(
                [{"role": "user", "content": f"<image>\n{q['question']}"}],
                [str(data / q["image"])],
                add_generation_prompt=True,
            )
            for q in chunk
        ]
        batch = WingsCollator(processor.pad_token_id, padding_side="left")(samples)  # the last token is the prompt's
        batch.pop("labels", None)
        output = model(**batch, output_hidden_states=True)
        states.append(torch.stack([layer[:, -1] for layer in output.hidden_states], 1).float().numpy())
        last = output.logits[:, -1]
        answers += ["yes" if bool(y > n) else "no" for y, n in zip(last[:, yes], last[:, no])]
    return np.concatenate(states), np.array(answers)


def probe(
    model_dir: Path, data: Path, train_questions: int, test_questions: int, target: str = "answer"
) -> dict[str, Any]:
    """Per layer, the probe's test accuracy on the right answer (or the image's colour / shape); beside it the
    prior's (the most frequent class's) and the model's own answer."""
    model = WingsForConditionalGeneration.from_pretrained(model_dir)
    processor = WingsProcessor.from_pretrained(model_dir)
    train, test = yes_no_questions(data, "train", train_questions), yes_no_questions(data, "test", test_questions)
    if target != "answer":  # the label is what the image shows: keep the questions whose image has both labels
        shown = image_labels(data)
        train, test = (
            [dict(q, answer=shown[q["image"]][target]) for q in qs if q["image"] in shown] for qs in (train, test)
        )
    train_states, _ = answer_states(model, processor, data, train)
    test_states, own = answer_states(model, processor, data, test)
    truth_train = np.array([q["answer"] for q in train])
    truth = np.array([q["answer"] for q in test])
    if target != "answer":
        majority = Counter(truth_train.tolist()).most_common(1)[0][0]
        prior = {q["question"]: majority for q in test}
    else:
        prior = question_prior(data)
    layers = []
    for layer in range(train_states.shape[1]):
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
        classifier.fit(train_states[:, layer], truth_train)
        layers.append(round(100 * float((classifier.predict(test_states[:, layer]) == truth).mean()), 1))
    return {
        "model": str(model_dir),
        "target": target,
        "train_questions": len(train),
        "test_questions": len(test),
        "question_prior": round(100 * float(np.mean([prior.get(q["question"], "no") == q["answer"] for q in test])), 1),
        "model_answer": round(100 * float((own == truth).mean()), 1) if target == "answer" else None,
        "probe_by_layer": layers,  # 0: the input embeddings, then after each decoder layer
        "best_probe": max(layers),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a WINGS model folder (a stage's output)")
    parser.add_argument("--data", type=Path, required=True, help="`wings data easy-vqa --max-turns 1` output")
    parser.add_argument("--train-questions", type=int, default=1000, help="yes/no training questions to fit on")
    parser.add_argument("--test-questions", type=int, default=500, help="yes/no test questions to score")
    parser.add_argument(
        "--target", choices=("answer", "colour", "shape"), default="answer", help="what the probes predict"
    )
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model} holds no model (config.json)")
    if not (args.data / "train.json").is_file() or not (args.data / "test_questions.jsonl").is_file():
        parser.error(f"--data {args.data}: write it with `wings data easy-vqa --out {args.data} --max-turns 1`")
    result = probe(args.model, args.data, args.train_questions, args.test_questions, args.target)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
