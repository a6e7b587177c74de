"""Scoring easy-vqa by question kind (yes/no, colour, shape), for the experiments of docs/results/demo.md.

`KindScorer` ranks easy-vqa's answers by the model's next-token logits (one teacher-forced forward per question,
no generation, except where a yes/no mode asks the model to write first); `ScoreEvery` runs it during training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from experiments.easy_vqa_yes_no_modes import (
    CAPTION_QUESTION,
    COLOUR_QUESTION,
    SHAPE_QUESTION,
    caption_text_question,
    caption_turn_prompt,
    description,
    greedy_answers,
    last_word,
    names,
)
from wings.model.processing_wings import WingsCollator

KINDS = ("yes/no", "colour", "shape")
# yes/no accuracy on the questions whose image has known labels: the same questions in every mode (caption-text asks
# the others plainly), so modes compare on it.
LABELLED_YES_NO = "yes/no, images with labels"


def question_kind(question: str, answer: str) -> str:
    if answer in ("yes", "no"):
        return "yes/no"
    return "colour" if "color" in question else "shape"


class KindScorer:
    """Scores a model on the first test questions by the answer it ranks first among easy-vqa's answers.

    With `mode` (`YES_NO_MODES`) "describe-first", yes/no questions are answered by greedy generation instead and
    scored by the answer's last word ("red circle. no" -> "no"); with "caption-turn", the model first captions the
    image in a turn of its own (greedy) and the yes/no question follows as the next turn, ranked as the others; with
    "caption-text", the true caption is written before a yes/no question (the image kept; a question whose image has
    no known labels is asked plainly); with "own-caption-text", the same with the model's own caption, built from
    the answers it ranks first to the image's colour and shape questions (`COLOUR_QUESTION`, `SHAPE_QUESTION`); with
    "other-caption-text", the true caption of another image, of another colour and shape (`other_captions`): what
    the answer follows, the words or the image.
    "description" is then the share of yes/no questions whose generated description or caption names the image's
    colour and shape right (of the questions whose image has both labels)."""

    def __init__(self, data: Path, limit: int, mode: str = "plain") -> None:
        self.data = data
        self.answers = json.loads((data / "answers.json").read_text())["answers"]
        lines = (data / "test_questions.jsonl").read_text().splitlines()[:limit]
        self.questions = [json.loads(line) for line in lines]
        self.mode = mode
        self.labels = image_labels(data)

    @torch.no_grad()
    def score(self, model: Any, processor: Any, chunk_size: int = 50) -> dict[str, float]:
        """{kind: accuracy in percent} and "all"; the model is left in the mode it was in."""
        training = model.training
        model.eval()
        yes_no = [q for q in self.questions if q["answer"] in ("yes", "no")]
        written: list[str] = []  # per yes/no question: its description-led answer, or the model's caption of its image
        if self.mode == "describe-first":
            written = greedy_answers(
                model, processor, self.data, [(q["image"], q["question"]) for q in yes_no], chunk_size
            )
        captions: dict[str, str] = {}
        images = sorted({q["image"] for q in yes_no})
        if self.mode == "caption-turn":
            asked = [(image, CAPTION_QUESTION) for image in images]
            captions = dict(zip(images, greedy_answers(model, processor, self.data, asked, chunk_size)))
        if self.mode == "own-caption-text":
            asked = [(image, question) for question in (COLOUR_QUESTION, SHAPE_QUESTION) for image in images]
            read = self.ranked(
                model, processor, [self.plain_prompt(question) for _, question in asked], asked, chunk_size
            )
            captions = {image: f"{colour} {shape}" for image, colour, shape in zip(images, read, read[len(images) :])}
        if self.mode == "other-caption-text":
            captions = other_captions(self.labels)
        elif captions:
            written = [captions[q["image"]] for q in yes_no]
        ranked_questions = [
            q for q in self.questions if not (self.mode == "describe-first" and q["answer"] in ("yes", "no"))
        ]
        prompts = [self.prompt(q, captions) for q in ranked_questions]
        chosen = self.ranked(
            model, processor, prompts, [(q["image"], q["question"]) for q in ranked_questions], chunk_size
        )
        right: dict[str, list[bool]] = {kind: [] for kind in KINDS}
        labelled: list[bool] = []  # yes/no questions whose image has known labels: every caption mode captions them
        for question, answer in zip(ranked_questions, chosen):
            right[question_kind(question["question"], question["answer"])].append(answer == question["answer"])
            if question["answer"] in ("yes", "no") and question["image"] in self.labels:
                labelled.append(answer == question["answer"])
        model.train(training)
        scores: dict[str, float] = {}
        if self.mode == "describe-first":
            right["yes/no"] = [last_word(text) == q["answer"] for q, text in zip(yes_no, written)]
            labelled = [ok for q, ok in zip(yes_no, right["yes/no"]) if q["image"] in self.labels]
        if written:
            described = [
                names(text, description(self.labels[q["image"]]))
                for q, text in zip(yes_no, written)
                if q["image"] in self.labels
            ]
            scores["description"] = round(100 * sum(described) / max(len(described), 1), 1)
        scores |= {kind: round(100 * sum(r) / len(r), 1) for kind, r in right.items() if r}
        if labelled:
            scores[LABELLED_YES_NO] = round(100 * sum(labelled) / len(labelled), 1)
        scores["all"] = round(100 * sum(map(sum, right.values())) / len(self.questions), 1)
        return scores

    def ranked(
        self,
        model: Any,
        processor: Any,
        prompts: list[list[dict[str, str]]],
        asked: list[tuple[str, str]],
        chunk_size: int,
    ) -> list[str]:
        """Per prompt (its image from `asked`), the easy-vqa answer whose first token the model ranks first."""
        first_token = torch.tensor(
            [processor.tokenizer(a, add_special_tokens=False).input_ids[0] for a in self.answers]
        )
        chosen: list[str] = []
        for start in range(0, len(prompts), chunk_size):
            samples = [
                processor.encode_conversation(prompt, [str(self.data / image)], add_generation_prompt=True)
                for prompt, (image, _) in zip(prompts[start : start + chunk_size], asked[start : start + chunk_size])
            ]
            batch = WingsCollator(processor.pad_token_id, padding_side="left")(samples)
            batch.pop("labels", None)
            batch = {key: value.to(model.device) for key, value in batch.items()}
            ranked = model(**batch).logits[:, -1, first_token.to(model.device)].argmax(-1)
            chosen += [self.answers[choice] for choice in ranked.tolist()]
        return chosen

    @staticmethod
    def plain_prompt(question: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"<image>\n{question}"}]

    def prompt(self, question: dict[str, Any], captions: dict[str, str]) -> list[dict[str, str]]:
        """The question alone, or a yes/no question after the model's own caption turn (caption-turn) or with a
        caption written before it (caption-text: the true one; own-caption-text: the model's; other-caption-text:
        another image's)."""
        if question["answer"] not in ("yes", "no"):
            return self.plain_prompt(question["question"])
        if self.mode == "caption-turn":
            return caption_turn_prompt(question["question"], captions[question["image"]])
        if self.mode in ("own-caption-text", "other-caption-text") and question["image"] in captions:
            return [
                {"role": "user", "content": caption_text_question(question["question"], captions[question["image"]])}
            ]
        if self.mode == "caption-text" and question["image"] in self.labels:
            seen = description(self.labels[question["image"]])
            return [{"role": "user", "content": caption_text_question(question["question"], seen)}]
        return self.plain_prompt(question["question"])


class ScoreEvery(TrainerCallback):
    """Scores the model being trained every `every` steps and once at the end, printing and keeping the scores (the
    model as trained, in its stage's learner mode: stage 1 without the textual learner)."""

    def __init__(self, scorer: KindScorer, every: int) -> None:
        self.scorer, self.every = scorer, every
        self.history: list[dict[str, Any]] = []
        self.final: dict[str, float] = {}

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if self.every and state.global_step % self.every == 0 and state.global_step < state.max_steps:
            scores = self.scorer.score(model, processing_class)
            self.history.append({"step": state.global_step, **scores})
            print(f"  step {state.global_step}: {scores}")

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.final = self.scorer.score(model, processing_class)


def training_questions(data: Path) -> list[tuple[dict[str, Any], str, str]]:
    """(record, question, answer) of every turn of the training conversations, the question without `<image>`."""
    found = []
    for record in json.loads((data / "train.json").read_text()):
        turns = record["conversations"]
        for turn in range(0, len(turns) - 1, 2):
            found.append((record, turns[turn]["value"].replace("<image>", "").strip(), turns[turn + 1]["value"]))
    return found


def image_labels(data: Path) -> dict[str, dict[str, str]]:
    """image -> {"colour": ..., "shape": ...} from the open questions of both splits (the images with both)."""
    found: dict[str, dict[str, str]] = {}
    test = [json.loads(line) for line in (data / "test_questions.jsonl").read_text().splitlines()]
    pairs = [(record["image"], q, a) for record, q, a in training_questions(data)]
    for image, question, answer in pairs + [(q["image"], q["question"], q["answer"]) for q in test]:
        if answer not in ("yes", "no"):
            found.setdefault(image, {})[question_kind(question, answer)] = answer
    return {image: labels for image, labels in found.items() if len(labels) == 2}


def other_captions(labels: dict[str, dict[str, str]]) -> dict[str, str]:
    """Per image, the true caption of the next image (in sorted order, wrapping round) whose colour and shape both
    differ: a caption that is wrong on both words a yes/no question may ask about."""
    images = sorted(labels)
    captions = {}
    for index, image in enumerate(images):
        for other in images[index + 1 :] + images[:index]:
            if all(labels[other][kind] != labels[image][kind] for kind in ("colour", "shape")):
                captions[image] = description(labels[other])
                break
    return captions
