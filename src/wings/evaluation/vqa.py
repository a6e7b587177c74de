"""Visual question answering: loaders, answer normalisation and the two scorers (open answers, multiple choice).

Sources, each turned into `VisualQuestion`s:
    easy-vqa     the folder written by `wings data easy-vqa` (`test_questions.jsonl`, images beside it)
    vqa:FILE     JSONL, one question a line: `image` (path, relative to the file), `question`, `answer`
                 (a string, or a list of accepted strings), optional `choices` (then multiple choice;
                 `answer` is an index, a letter or the text of a choice), `id`, `category`
    mmbench:FILE MMBench's TSV: `index`, `question`, `hint`, `A`..`D`, `answer` (letter), `category`,
                 `image` (base64)

Prompt: one user turn `<image>\\n{question}` through the chat template, with the generation prompt; a
model that cannot see images (a base LLM) gets the question alone and its results say `images_seen: false`.
Open answers: greedy generation, exact match after `normalize_answer`. Multiple choice: the summed
log-probability of each choice after the prompt ("likelihood"), or of each option's letter after a prompt
listing the options ("letter", MMBench's format).
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
import math
import random
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from wings.data.formats import IMAGE_PLACEHOLDER, read_jsonl, required_field
from wings.evaluation.multiple_choice import loglikelihoods
from wings.model.processing_wings import WingsCollator

LETTERS = "ABCDEFGHIJ"
LETTER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class VisualQuestion:
    """One question about one image. `answers` are the accepted texts; `gold` indexes `choices` (MC only)."""

    id: str
    image: str | bytes | None
    question: str
    answers: tuple[str, ...]
    choices: tuple[str, ...] = ()
    gold: int | None = None
    kind: str | None = None  # easy-vqa's question type: "yes/no" or "open"
    group: str | None = None  # MMBench category, or the generic schema's `category`
    hint: str | None = None


# ------------------------------------------------------------------------------------------- normalisation
# The VQA evaluation's normalisation, shortened: lowercase, punctuation out, number words to digits, articles out.
_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = re.compile(r"[^\w\s']|_")


def normalize_answer(text: str) -> str:
    """`"The Circle."` -> `"circle"`, `"Two"` -> `"2"`, `"isn't"` -> `"isnt"`: the form exact match compares."""
    text = text.strip().splitlines()[0] if text.strip() else ""
    text = _PUNCTUATION.sub(" ", text.lower()).replace("'", "")
    words = [_NUMBERS.get(word, word) for word in text.split() if word not in _ARTICLES]
    return " ".join(words)


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    """Whether the normalised prediction equals any normalised accepted answer."""
    return normalize_answer(prediction) in {normalize_answer(answer) for answer in answers}


# ------------------------------------------------------------------------------------------- loaders
def _image_path(value: Any, base: Path, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: field 'image' must be a path to the picture (relative to {base})")
    path = Path(value) if Path(value).is_absolute() else base / value
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image {path} does not exist")
    return str(path)


def easy_vqa_questions_file(folder: Path) -> Path:
    """`test_questions.jsonl` in `folder` (or its `easy_vqa`/`easy-vqa` subfolder); a clear error otherwise."""
    for candidate in (folder, folder / "easy_vqa", folder / "easy-vqa"):
        if (candidate / "test_questions.jsonl").is_file():
            return candidate / "test_questions.jsonl"
    raise FileNotFoundError(
        f"easy-vqa: no test_questions.jsonl in {folder} (nor in its easy_vqa/ or easy-vqa/ subfolder); "
        "write it with `wings data easy-vqa --out DIR`"
    )


def load_easy_vqa(folder: str | Path) -> list[VisualQuestion]:
    """The easy-VQA test questions written by `wings data easy-vqa` (fields id, image, question, answer, type)."""
    path = easy_vqa_questions_file(Path(folder))
    questions = []
    for index, record in enumerate(read_jsonl(path)):
        where = f"{path} record {index + 1}"
        answer = str(required_field(record, "answer", where))
        kind = record.get("type") or ("yes/no" if answer in ("yes", "no") else "open")
        image = _image_path(required_field(record, "image", where), path.parent, where)
        questions.append(
            VisualQuestion(
                str(record.get("id", index)),
                image,
                str(required_field(record, "question", where)),
                (answer,),
                kind=kind,
            )
        )
    return questions


def easy_vqa_sample(questions: Sequence[VisualQuestion], limit: int, seed: int) -> list[VisualQuestion]:
    """`limit` questions, a seeded sample in file order: easy-vqa's file runs image by image, so the first
    `limit` would cover few images."""
    picked = random.Random(seed).sample(range(len(questions)), min(limit, len(questions)))
    return [questions[index] for index in sorted(picked)]


def easy_vqa_train_answers(folder: str | Path) -> list[tuple[str, str, str]]:
    """(question type, question, answer) of every training question in `train.json` beside the test file."""
    path = easy_vqa_questions_file(Path(folder)).with_name("train.json")
    if not path.is_file():
        raise FileNotFoundError(f"easy-vqa: {path} is needed for the answer prior; write it with `wings data easy-vqa`")
    triples = []
    for record in json.loads(path.read_text(encoding="utf-8")):
        questions = [turn["value"] for turn in record["conversations"] if turn["from"] == "human"]
        answers = [turn["value"] for turn in record["conversations"] if turn["from"] == "gpt"]
        kinds = record.get("answer_types") or ["yes/no" if a in ("yes", "no") else "open" for a in answers]
        triples += list(zip(kinds, questions, answers))
    return triples


def load_vqa_jsonl(path: str | Path) -> list[VisualQuestion]:
    """The generic VQA schema (module docstring): open answers, or multiple choice when `choices` is given."""
    path = Path(path)
    questions = []
    for index, record in enumerate(read_jsonl(path)):
        where = f"{path} record {index + 1}"
        image = _image_path(required_field(record, "image", where), path.parent, where)
        question, answer = required_field(record, "question", where), required_field(record, "answer", where)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: field 'question' must be a non-empty string")
        choices, gold = record.get("choices"), None
        if choices is not None:
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise ValueError(f"{where}: field 'choices' must be a list of at least two strings")
            gold = _choice_index(answer, choices, where)
            answers: tuple[str, ...] = (choices[gold],)
        elif isinstance(answer, str) and answer.strip():
            answers = (answer,)
        elif isinstance(answer, list) and answer and all(isinstance(a, str) for a in answer):
            answers = tuple(answer)
        else:
            raise ValueError(f"{where}: field 'answer' must be a string or a list of accepted strings")
        questions.append(
            VisualQuestion(
                str(record.get("id", index)),
                image,
                question,
                answers,
                tuple(choices or ()),
                gold,
                group=record.get("category"),
            )
        )
    return questions


def _choice_index(answer: Any, choices: list[str], where: str) -> int:
    if isinstance(answer, int) and not isinstance(answer, bool):
        gold = answer
    elif isinstance(answer, str) and answer in choices:
        gold = choices.index(answer)
    elif isinstance(answer, str) and len(answer) == 1 and answer.upper() in LETTERS:
        gold = LETTERS.index(answer.upper())
    else:
        raise ValueError(f"{where}: field 'answer' {answer!r} is neither an index, a letter nor the text of a choice")
    if not 0 <= gold < len(choices):
        raise ValueError(f"{where}: field 'answer' {answer!r} is out of range for {len(choices)} choices")
    return gold


def load_mmbench_tsv(path: str | Path) -> list[VisualQuestion]:
    """MMBench's TSV layout: options A-D (empty ones dropped), the answer letter, a base64 image per row."""
    path = Path(path)
    csv.field_size_limit(sys.maxsize)  # base64 images are far longer than csv's default field limit
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    questions = []
    for number, row in enumerate(rows, 2):  # line 1 is the header
        where = f"{path} line {number}"
        options = [
            (letter, row[letter].strip()) for letter in "ABCD" if (row.get(letter) or "").strip() not in ("", "nan")
        ]
        if len(options) < 2:
            raise ValueError(f"{where}: needs at least two of the option columns A, B, C, D")
        answer = (required_field(row, "answer", where) or "").strip().upper()
        if answer not in [letter for letter, _ in options]:
            raise ValueError(
                f"{where}: field 'answer' {answer!r} is not one of the options {[letter for letter, _ in options]}"
            )
        try:
            image = base64.b64decode(required_field(row, "image", where) or "", validate=True)
        except binascii.Error as error:
            raise ValueError(f"{where}: field 'image' is not valid base64 ({error})") from error
        if not image:
            raise ValueError(f"{where}: field 'image' is empty")
        hint = (row.get("hint") or "").strip()
        choices = tuple(text for _, text in options)
        gold = [letter for letter, _ in options].index(answer)
        questions.append(
            VisualQuestion(
                str(row.get("index", number)),
                image,
                str(required_field(row, "question", where)),
                (choices[gold],),
                choices,
                gold,
                group=(row.get("category") or None),
                hint=hint if hint and hint != "nan" else None,
            )
        )
    return questions


# ------------------------------------------------------------------------------------------- prompts
def question_text(question: VisualQuestion, mc_mode: str | None = None, suffix: str | None = None) -> str:
    """The user turn's text (without the image placeholder): hint, question, lettered options, suffix."""
    parts = [question.hint] if question.hint else []
    parts.append(question.question)
    if mc_mode == "letter":
        parts += [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(question.choices)] + [LETTER_INSTRUCTION]
    if suffix:
        parts.append(suffix)
    return "\n".join(parts)


def render_prompt(encoder: Any, text: str, with_image: bool) -> str:
    """The rendered chat prompt ending where the answer starts (plain "Question: ..\\nAnswer:" without a template)."""
    content = f"{IMAGE_PLACEHOLDER}\n{text}" if with_image else text
    messages = [{"role": "user", "content": content}]
    if hasattr(encoder, "render"):
        return encoder.render(messages, add_generation_prompt=True)
    if getattr(encoder, "chat_template", None):
        return encoder.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return f"Question: {text}\nAnswer:"


def can_see_images(model: Any, encoder: Any) -> bool:
    """A WINGS processor and a model with a vision tower: images are shown; otherwise the question alone."""
    return hasattr(encoder, "encode_text") and getattr(model, "vision_tower", None) is not None


# ------------------------------------------------------------------------------------------- scorers
def _batches(items: list, size: int) -> list[list]:
    return [items[start : start + size] for start in range(0, len(items), size)]


@torch.no_grad()
def generate_answers(
    model: Any,
    encoder: Any,
    questions: Sequence[VisualQuestion],
    suffix: str | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 8,
    progress: bool = False,
) -> list[str]:
    """Greedy answers, batched with left padding and the KV cache; text only when the model cannot see."""
    with_images = can_see_images(model, encoder)
    tokenizer = getattr(encoder, "tokenizer", encoder)
    device = next(model.parameters()).device
    eos = {tokenizer.eos_token_id} | set(
        _as_list(getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers = []
    for batch in tqdm(_batches(list(questions), batch_size), desc="vqa", disable=not progress, leave=False):
        prompts = [render_prompt(encoder, question_text(q, suffix=suffix), with_images) for q in batch]
        if with_images:
            inputs = encoder(text=prompts, images=[[q.image] for q in batch], padding_side="left")
            inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "pixel_values") if k in inputs}
            inputs["pixel_values"] = inputs["pixel_values"].to(next(model.parameters()).dtype)
        else:
            templated = hasattr(encoder, "render") or bool(getattr(tokenizer, "chat_template", None))
            side, tokenizer.padding_side = tokenizer.padding_side, "left"
            try:  # the chat template writes its own BOS; a plain prompt gets the tokenizer's
                inputs = dict(tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not templated))
            finally:
                tokenizer.padding_side = side
            inputs = {k: inputs[k] for k in ("input_ids", "attention_mask")}
        inputs = {k: v.to(device) for k, v in inputs.items()}
        output = model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            use_cache=True,
            pad_token_id=pad_id,
            eos_token_id=sorted(i for i in eos if i is not None),
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        answers += [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new_tokens.tolist()]
    return answers


def _as_list(value: Any) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


@torch.no_grad()
def choice_loglikelihoods(
    model: Any,
    encoder: Any,
    questions: Sequence[VisualQuestion],
    mc_mode: str = "likelihood",
    suffix: str | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> list[list[float]]:
    """Summed log-probability of each choice (or its letter) after the image + question prompt."""
    with_images = can_see_images(model, encoder)
    requests: list[tuple[int, str, str, Any]] = []  # (question index, prompt, continuation, image)
    for index, q in enumerate(questions):
        prompt = render_prompt(encoder, question_text(q, mc_mode, suffix), with_images)
        options = LETTERS[: len(q.choices)] if mc_mode == "letter" else q.choices
        requests += [(index, prompt, option, q.image) for option in options]
    if with_images:
        scores = _visual_loglikelihoods(model, encoder, [(p, c, i) for _, p, c, i in requests], batch_size, progress)
    else:
        tokenizer = getattr(encoder, "tokenizer", encoder)
        scores = [s for s, _ in loglikelihoods(model, tokenizer, [(p, c) for _, p, c, _ in requests], batch_size)]
    per_question: list[list[float]] = [[] for _ in questions]
    for (index, *_), score in zip(requests, scores):
        per_question[index].append(score)
    return per_question


def _visual_loglikelihoods(
    model: Any, processor: Any, requests: list[tuple[str, str, Any]], batch_size: int, progress: bool
) -> list[float]:
    """Right-padded batches of (prompt + continuation, image); the continuation is the tail past the prompt."""
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    encoded = []
    for prompt, continuation, image in requests:
        context = processor.encode_text(prompt, [image])
        whole = processor.encode_text(prompt + continuation, [image])
        n = len(context["input_ids"])
        if whole["input_ids"][:n].tolist() != context["input_ids"].tolist() or len(whole["input_ids"]) == n:
            raise ValueError(f"choice {continuation!r} changes the tokenisation of its prompt; cannot score it")
        encoded.append((whole, n))
    scores = []
    collate = WingsCollator(processor.pad_token_id, padding_side="right")
    for batch in tqdm(_batches(encoded, batch_size), desc="vqa-mc", disable=not progress, leave=False):
        inputs = collate([sample for sample, _ in batch])
        logits = model(
            input_ids=inputs["input_ids"].to(device),
            attention_mask=inputs["attention_mask"].to(device),
            pixel_values=inputs["pixel_values"].to(device, dtype),
        ).logits.float()
        log_probs = torch.log_softmax(logits, dim=-1)
        for row, (sample, n) in enumerate(batch):
            targets = sample["input_ids"][n:].to(device)
            positions = torch.arange(n - 1, len(sample["input_ids"]) - 1, device=device)
            scores.append(float(log_probs[row, positions].gather(-1, targets[:, None]).sum()))
    return scores


# ------------------------------------------------------------------------------------------- the task
def evaluate_vqa(
    model: Any,
    encoder: Any,
    questions: Sequence[VisualQuestion],
    mc_mode: str = "likelihood",
    suffix: str | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 8,
    limit: int | None = None,
    progress: bool = False,
    swapped: Sequence[VisualQuestion | None] | None = None,
) -> dict[str, Any]:
    """`acc` over the questions (multiple choice when they have choices, else open answers), and breakdowns:
    `acc_yes_no` / `acc_open` by easy-vqa question type, `categories` by group; `images_seen` says whether
    the model was shown the images; `predictions` keeps the first 20 answers for a look at what it says.

    With `swapped` (`image_swapped`: each question again, about an image of another shape and colour),
    `image_swap_changed` is the share of answers that change with the image: 0 for a model that does not look (or
    cannot see). `image_swap_changed_open` counts the open questions alone, whose right answer always changes."""
    if mc_mode not in ("likelihood", "letter"):
        raise ValueError(f"mc_mode={mc_mode!r}; use 'likelihood' or 'letter'")
    questions = list(questions)[:limit] if limit else list(questions)
    multiple_choice = [q for q in questions if q.choices]
    open_ended = [q for q in questions if not q.choices]
    correct: dict[str, float] = {}
    predictions: dict[str, str] = {}
    if open_ended:
        answers = generate_answers(model, encoder, open_ended, suffix, batch_size, max_new_tokens, progress)
        for q, answer in zip(open_ended, answers):
            correct[q.id], predictions[q.id] = float(exact_match(answer, q.answers)), answer
    if multiple_choice:
        scores = choice_loglikelihoods(model, encoder, multiple_choice, mc_mode, suffix, batch_size, progress)
        for q, choice_scores in zip(multiple_choice, scores):
            picked = max(range(len(choice_scores)), key=choice_scores.__getitem__)
            correct[q.id], predictions[q.id] = float(picked == q.gold), q.choices[picked]
    swap: dict[str, Any] = {}
    if swapped is not None:
        pairs = [
            (q, other) for q, other in zip(questions, swapped[: len(questions)]) if other is not None and not q.choices
        ]
        changed = [0.0] * len(pairs)
        if pairs and can_see_images(model, encoder):  # a model that never sees the image cannot change its answer
            again = generate_answers(
                model, encoder, [other for _, other in pairs], suffix, batch_size, max_new_tokens, progress
            )
            changed = [
                float(normalize_answer(answer) != normalize_answer(predictions[q.id]))
                for (q, _), answer in zip(pairs, again)
            ]
        opened = [value for (q, _), value in zip(pairs, changed) if q.kind == "open"]
        swap = {
            "image_swap_changed": sum(changed) / len(pairs) if pairs else float("nan"),
            "image_swap_questions": len(pairs),
            "image_swap_changed_open": sum(opened) / len(opened) if opened else float("nan"),
        }
    return (
        summarize(questions, [correct[q.id] for q in questions])
        | swap
        | {
            "images_seen": can_see_images(model, encoder),
            "predictions": [
                {"id": q.id, "prediction": predictions[q.id], "answer": q.answers[0]} for q in questions[:20]
            ],
        }
    )


def wilson_interval(successes: float, total: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (sound near 0 and 1, unlike the normal approximation)."""
    if total == 0:
        return (float("nan"), float("nan"))
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(questions: Sequence[VisualQuestion], correct: Sequence[float]) -> dict[str, Any]:
    """`acc` with its 95% interval `acc_ci95`, `acc_yes_no` / `acc_open` (and intervals) when questions have
    easy-vqa types, `categories` when they have groups."""

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    out: dict[str, Any] = {
        "acc": mean(list(correct)),
        "num_samples": len(correct),
        "acc_ci95": wilson_interval(sum(correct), len(correct)),
    }
    by_kind, by_group = defaultdict(list), defaultdict(list)
    for q, value in zip(questions, correct):
        if q.kind:
            by_kind[q.kind].append(value)
        if q.group:
            by_group[q.group].append(value)
    if by_kind:
        out["acc_yes_no"], out["acc_open"] = mean(by_kind["yes/no"]), mean(by_kind["open"])
        out["acc_yes_no_ci95"] = wilson_interval(sum(by_kind["yes/no"]), len(by_kind["yes/no"]))
        out["acc_open_ci95"] = wilson_interval(sum(by_kind["open"]), len(by_kind["open"]))
        out["num_yes_no"], out["num_open"] = len(by_kind["yes/no"]), len(by_kind["open"])
    if by_group:
        out["categories"] = {g: {"acc": mean(v), "num_samples": len(v)} for g, v in sorted(by_group.items())}
    return out


# ------------------------------------------------------------------------------------------- image swap
def easy_vqa_image_labels(questions: Sequence[VisualQuestion]) -> dict[str, tuple[str, str]]:
    """(shape, colour) of each easy-vqa image that has both open questions ("what shape ..", "what color ..")."""
    found: dict[str, dict[str, str]] = defaultdict(dict)
    for q in questions:
        if q.kind == "open" and isinstance(q.image, str):
            found[q.image]["colour" if "color" in q.question or "colour" in q.question else "shape"] = q.answers[0]
    return {image: (labels["shape"], labels["colour"]) for image, labels in found.items() if len(labels) == 2}


def image_swapped(
    questions: Sequence[VisualQuestion], pool: Sequence[VisualQuestion] | None = None
) -> list[VisualQuestion | None]:
    """Each question again about another image whose shape AND colour differ from its own (the next such image in
    the pool's order, cyclically, so the choice is fixed); None where a label is unknown. An answer that reads the
    image must then change for nearly every question; one that reads only the question cannot."""
    labels = easy_vqa_image_labels(pool if pool is not None else questions)
    images = list(labels)
    swapped: list[VisualQuestion | None] = []
    for q in questions:
        own = labels.get(q.image) if isinstance(q.image, str) else None
        if own is None:
            swapped.append(None)
            continue
        start = images.index(q.image)
        other = next(
            (
                images[(start + k) % len(images)]
                for k in range(1, len(images))
                if labels[images[(start + k) % len(images)]][0] != own[0]
                and labels[images[(start + k) % len(images)]][1] != own[1]
            ),
            None,
        )
        swapped.append(
            None
            if other is None
            else VisualQuestion(f"{q.id}-swap", other, q.question, q.answers, kind=q.kind, group=q.group)
        )
    return swapped


# ------------------------------------------------------------------------------------------- answer prior
def answer_prior(train: Sequence[tuple[str, str, str]]) -> dict[str, str]:
    """The most frequent training answer per question type (ties: the first seen), from (type, question, answer)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for kind, _, answer in train:
        counts[kind][answer] += 1
    return {kind: counter.most_common(1)[0][0] for kind, counter in counts.items()}


def question_key(question: str) -> str:
    """A question's text without the image placeholder, case or spacing (to match test and training questions)."""
    return " ".join(question.replace(IMAGE_PLACEHOLDER, " ").lower().split())


def question_prior(train: Sequence[tuple[str, str, str]]) -> dict[str, str]:
    """The most frequent training answer of each question text: what a model can score from the question alone,
    never looking at the image, by remembering the training answers (easy-vqa's templates make this high)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for _, question, answer in train:
        counts[question_key(question)][answer] += 1
    return {question: counter.most_common(1)[0][0] for question, counter in counts.items()}


def prior_accuracy(
    questions: Sequence[VisualQuestion], prior: dict[str, str], by_question: dict[str, str] | None = None
) -> dict[str, Any]:
    """What always answering the prior's answer for each question's type scores (same breakdowns as a model);
    with `by_question` (`question_prior`), the question's own most frequent training answer where it has one."""
    guesses = [(by_question or {}).get(question_key(q.question)) or prior.get(q.kind or "", "") for q in questions]
    correct = [float(exact_match(guess, q.answers)) for guess, q in zip(guesses, questions)]
    return summarize(questions, correct) | ({"answers": dict(prior)} if by_question is None else {})
