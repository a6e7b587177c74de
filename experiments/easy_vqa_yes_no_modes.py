"""How the stage experiment poses easy-vqa's yes/no questions (docs/results/demo.md, "Why yes/no stays at the
question prior"): as they are ("plain"); with the answer led by what the image shows ("describe-first": "is there a
blue shape?" -> "red circle. no"); or after a caption turn ("caption-turn": "what is in the image?" -> "red circle",
then the question). The two rewritten modes put the words a yes/no question compares into the text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wings.evaluation.vqa import VisualQuestion, generate_answers

YES_NO_MODES = ("plain", "describe-first", "caption-turn", "caption-text", "own-caption-text", "other-caption-text")
CAPTION_QUESTION = "what is in the image?"
# easy-vqa's own open questions; "own-caption-text" builds the model's caption from its answers to them.
COLOUR_QUESTION = "what color is the shape?"
SHAPE_QUESTION = "what shape is in the image?"


def description(labels: dict[str, str]) -> str:
    """What the image shows, as the rewritten answers and caption turns name it: "red circle"."""
    return f"{labels['colour']} {labels['shape']}"


def rewrite_yes_no(records: list[dict[str, Any]], labels: dict[str, dict[str, str]], mode: str) -> list[dict[str, Any]]:
    """One-question conversations with their yes/no questions posed as `mode` poses them; yes/no conversations whose
    image has no known colour and shape (`labels`) are left out, the others are kept as they are."""
    rewritten = []
    for record in records:
        question, answer = (turn["value"] for turn in record["conversations"][:2])
        if mode != "plain" and answer in ("yes", "no"):
            if record["image"] not in labels:
                continue
            seen = description(labels[record["image"]])
            if mode == "describe-first":
                turns = [{"from": "human", "value": question}, {"from": "gpt", "value": f"{seen}. {answer}"}]
            elif mode in ("caption-text", "own-caption-text", "other-caption-text"):  # all train on the true one
                turns = [{"from": "human", "value": caption_text_question(question, seen)}, record["conversations"][1]]
            else:
                turns = [
                    {"from": "human", "value": f"<image>\n{CAPTION_QUESTION}"},
                    {"from": "gpt", "value": seen},
                    {"from": "human", "value": question.replace("<image>", "").strip()},
                    {"from": "gpt", "value": answer},
                ]
            record = {**record, "conversations": turns}
        rewritten.append(record)
    return rewritten


def caption_text_question(question: str, caption: str) -> str:
    """A yes/no question with the image's true caption written before it, the image still in the turn."""
    return f"<image>\nThe image shows a {caption}.\n{question.replace('<image>', '').strip()}"


def caption_turn_prompt(question: str, caption: str) -> list[dict[str, str]]:
    """The scored prompt of a caption-turn yes/no question: the model's own caption, then the question."""
    return [
        {"role": "user", "content": f"<image>\n{CAPTION_QUESTION}"},
        {"role": "assistant", "content": caption},
        {"role": "user", "content": question},
    ]


def greedy_answers(model: Any, processor: Any, data: Path, asked: list[tuple[str, str]], batch_size: int) -> list[str]:
    """The model's greedy answers (8 tokens at most) to (image, question) pairs, images relative to `data`."""
    questions = [
        VisualQuestion(id=str(i), image=str(data / image), question=question, answers=())
        for i, (image, question) in enumerate(asked)
    ]
    return generate_answers(model, processor, questions, batch_size=batch_size, max_new_tokens=8)


def names(text: str, seen: str) -> bool:
    """Whether a generated description or caption starts by naming what the image shows."""
    return text.lower().strip().startswith(seen)


def last_word(text: str) -> str:
    """The describe-first answer's yes / no: "red circle. no" -> "no" ("" for an empty answer)."""
    words = text.replace(".", " ").replace(",", " ").split()
    return words[-1].lower() if words else ""
