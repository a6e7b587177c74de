"""The IIT benchmark (Interleaved Image-Text): build the dialogues and score a model on them.

Each dialogue is multi-turn; only its last question is scored. Earlier turns are other questions with
their gold answers, the ones most similar to the scored question, never the scored question itself. Six
configurations by the modality of each turn, last turn scored:

    (T)  (T,T)  (T,T,T)  (T,T,V)  (T,V)  (V)

Configurations that end in the same modality score the SAME final questions (one draw for (T), (T,T),
(T,T,T); one for (V), (T,V), (T,T,V)), so a difference between them is the effect of the earlier turns, not
of other questions; dialogue `iit-TT-0003` and `iit-TTT-0003` end in the same question.

Similarity: the paper chose related questions by embedding similarity (a vector store) and polished some
with an LLM. Offline, TF-IDF cosine over the question text is the documented stand-in (no model to
download, deterministic); any `embed(texts) -> (n, d)` array replaces it (`--embedding-model`).

Text questions come from the evaluation tasks (`arc_easy`, `mmlu`, `mc:FILE.jsonl`, ...); visual ones from
the visual multiple-choice schema below (`load_visual_questions`). The same seed and sources give the same
file.

Scoring renders a dialogue as a real one when the tokenizer has a chat template: each turn's question is a
user message (a visual turn's image first), each earlier turn's gold choice the assistant's reply, and the
choices of the last question are scored as the assistant's answer after the template's generation prompt.
A tokenizer without a template gets plain text ("Question: ...\nAnswer: gold" turns, a blank line between).

File: JSONL, one dialogue a line: `{"id", "config": "T,T,V", "turns": [{"modality", "source", "source_id",
"prompt", "choices", "answer", "image", "similarity"}, ...]}`; `answer` is the gold index; the last turn is
the scored one.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from wings.data.formats import IMAGE_PLACEHOLDER, read_jsonl
from wings.evaluation.multiple_choice import TARGET_DELIMITER, encode_pair  # " " after "Answer:", as lm-eval
from wings.evaluation.tasks import get_task, load_generic_jsonl

CONFIGURATIONS: tuple[str, ...] = ("T", "T,T", "T,T,T", "T,T,V", "T,V", "V")
MODALITIES: tuple[str, ...] = ("T", "V")
TURN_DELIMITER = "\n\n"
Embedder = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class Question:
    """One multiple-choice question as a dialogue turn: its prompt, choices, gold index and image (V only)."""

    modality: str  # "T" or "V"
    source: str
    source_id: str
    prompt: str  # ends where the answer starts, e.g. "Question: ...\nAnswer:"
    choices: tuple[str, ...]
    answer: int
    image: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return self.source, self.source_id


# ------------------------------------------------------------------------------------------- sources
def load_text_questions(task_name: str, data_dir: Path | None = None, split: str | None = None) -> list[Question]:
    """A text multiple-choice task of the evaluation package (name or `mc:FILE.jsonl`) as questions."""
    task = get_task(task_name)
    if task.kind != "multiple_choice":
        raise ValueError(f"IIT text source {task_name}: a {task.kind} task, not multiple choice")
    docs = task.load(data_dir, split or task.split)
    # Partial-evaluation items (WinoGrande) have no single question/answer pair to put in a dialogue.
    return [
        Question("T", task_name, doc.id, doc.question, tuple(doc.choices), doc.gold)
        for doc in docs
        if doc.shared_continuation is None and doc.question
    ]


def load_visual_questions(path: str | Path) -> list[Question]:
    """Visual multiple choice, JSONL: `image` (path, relative to the file), `question`, `choices`, `answer`
    (index, letter or the text of a choice), optional `id`. Prompt: "Question: ...\\nAnswer:"."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"visual source {path} does not exist")
    records = read_jsonl(path)
    docs = load_generic_jsonl(path)  # the same checks and answer forms as the text schema
    questions = []
    for index, (record, doc) in enumerate(zip(records, docs)):
        image = record.get("image")
        if not isinstance(image, str) or not image:
            raise ValueError(f"{path} record {index + 1}: missing field 'image' (a path to the picture)")
        image = image if Path(image).is_absolute() else str(path.parent / image)
        questions.append(Question("V", f"vmc:{path.name}", doc.id, doc.question, tuple(doc.choices), doc.gold, image))
    return questions


def load_sources(
    names: Sequence[str], modality: str, data_dir: Path | None = None, split: str | None = None
) -> list[Question]:
    """All questions of the named sources (text tasks for "T"; visual JSONL files, `vmc:` optional, for "V")."""
    questions: list[Question] = []
    for name in names:
        if modality == "V":
            questions += load_visual_questions(name.removeprefix("vmc:"))
        else:
            questions += load_text_questions(name, data_dir, split)
    return questions


# ------------------------------------------------------------------------------------------- similarity
def similarity_text(question: Question) -> str:
    """The text compared: the prompt without the task's "Question:"/"Answer:" scaffolding."""
    return question.prompt.replace("Question:", " ").replace("Answer:", " ")


def tfidf_similarity(queries: list[str], pool: list[str]) -> np.ndarray:
    """(len(queries), len(pool)) cosine similarity of TF-IDF vectors fitted on both lists.

    The offline stand-in for the paper's embedding similarity: it matches questions that share (rare) words,
    not paraphrases; pass an embedding model (`embedding_similarity`) where one is available.
    """
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
    except ImportError as error:  # an optional extra: only the IIT builder needs it
        raise ImportError(
            "TF-IDF similarity needs scikit-learn: pip install scikit-learn (the `eval` extra), "
            "or pass an embedding model"
        ) from error

    vectors = TfidfVectorizer(sublinear_tf=True).fit(pool + queries)
    return (vectors.transform(queries) @ vectors.transform(pool).T).toarray()  # rows are L2-normalised


def embedding_similarity(queries: list[str], pool: list[str], embed: Embedder) -> np.ndarray:
    """Cosine similarity of the given embedding model's vectors."""
    a, b = np.asarray(embed(queries), dtype=np.float64), np.asarray(embed(pool), dtype=np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True).clip(min=1e-12)
    b /= np.linalg.norm(b, axis=1, keepdims=True).clip(min=1e-12)
    return a @ b.T


# ------------------------------------------------------------------------------------------- building
def build_iit(
    text: Sequence[Question],
    visual: Sequence[Question],
    per_config: int = 100,
    seed: int = 0,
    embed: Embedder | None = None,
    configurations: Sequence[str] = CONFIGURATIONS,
) -> list[dict[str, Any]]:
    """Dialogues for every configuration: `per_config` scored questions each (fewer if a pool is smaller).

    The scored questions are drawn once per final modality, so every configuration ending in T scores the
    same questions in the same order, and so does every configuration ending in V.
    """
    pools = {"T": list(text), "V": list(visual)}
    dialogues = []
    for config in configurations:
        modalities = config.split(",")
        if any(m not in pools for m in modalities):
            raise ValueError(f"configuration {config!r}: turns must be T or V")
        if any(not pools[m] for m in modalities):
            missing = "text (--text)" if not pools["T"] else "visual (--visual)"
            raise ValueError(f"configuration ({config}) needs {missing} questions; none were given")
        scored = scored_questions(pools[modalities[-1]], modalities[-1], per_config, seed)
        similarities = {
            m: _similarity([similarity_text(q) for q in scored], [similarity_text(q) for q in pools[m]], embed)
            for m in set(modalities[:-1])
        }
        for row, question in enumerate(scored):
            chosen: list[tuple[Question, float]] = []
            used = {question.key, _identity(question)}
            for modality in modalities[:-1]:
                scores = similarities[modality][row]
                for candidate in np.argsort(-scores, kind="stable"):  # ties: the pool's order
                    other = pools[modality][candidate]
                    if other.key not in used and _identity(other) not in used:
                        chosen.append((other, float(scores[candidate])))
                        used |= {other.key, _identity(other)}
                        break
                else:
                    raise ValueError(f"configuration ({config}): too few {modality} questions for the earlier turns")
            chosen.reverse()  # the most similar question sits right before the scored one
            turns = [_turn(q, similarity) for q, similarity in chosen] + [_turn(question, None)]
            dialogues.append({"id": f"iit-{config.replace(',', '')}-{row:04d}", "config": config, "turns": turns})
    return dialogues


def scored_questions(pool: Sequence[Question], modality: str, per_config: int, seed: int) -> list[Question]:
    """The scored questions of every configuration ending in `modality`: a draw that depends on the seed and
    the final modality only (WINGS.md: configurations ending alike score the same final questions)."""
    rng = random.Random(seed * 1000 + MODALITIES.index(modality))
    return rng.sample(list(pool), min(per_config, len(pool)))


def _similarity(queries: list[str], pool: list[str], embed: Embedder | None) -> np.ndarray:
    return embedding_similarity(queries, pool, embed) if embed is not None else tfidf_similarity(queries, pool)


def _identity(question: Question) -> tuple[str, str]:
    # The same question may appear under two ids (or two sources): compare the text too.
    return "text", question.prompt.strip() + "\x00" + (question.image or "")


def _turn(question: Question, similarity: float | None) -> dict[str, Any]:
    turn = asdict(question)
    turn["choices"] = list(question.choices)
    turn["similarity"] = similarity
    return turn


def write_iit(dialogues: list[dict[str, Any]], path: str | Path) -> Path:
    """One dialogue a line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dialogues), encoding="utf-8")
    return path


def read_iit(path: str | Path) -> list[dict[str, Any]]:
    """Dialogues of an IIT file, checked: every turn has prompt, choices and an answer in range."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IIT file {path} does not exist (build it with `wings iit build`)")
    dialogues = read_jsonl(path)
    for number, dialogue in enumerate(dialogues, 1):
        where = f"{path} dialogue {number} ({dialogue.get('id', 'no id')})"
        for turn_index, turn in enumerate(dialogue.get("turns") or [None]):
            if not isinstance(turn, dict) or not {"prompt", "choices", "answer", "modality"} <= set(turn):
                raise ValueError(f"{where} turn {turn_index}: needs modality, prompt, choices and answer")
            if not 0 <= int(turn["answer"]) < len(turn["choices"]):
                raise ValueError(f"{where} turn {turn_index}: answer {turn['answer']} out of range")
    return dialogues


# ------------------------------------------------------------------------------------------- rendering
ANSWER_CUE = re.compile(r"\s*Answer:\s*$")  # the plain prompt's last line; in a dialogue the assistant turn is the cue


@dataclass(frozen=True)
class RenderedDialogue:
    """A dialogue as the model reads it: everything before the scored answer, its images, and how a choice
    follows the context (`context + target_delimiter + choice` is the scored text)."""

    context: str
    images: list[str]
    target_delimiter: str
    chat_template: bool


def dialogue_messages(dialogue: dict[str, Any], with_images: bool) -> tuple[list[dict[str, str]], list[str]]:
    """The dialogue as chat messages: each question a user message (its image first, when shown), each earlier
    question answered by the assistant with its gold choice; the last message is the scored question."""
    messages, images = [], []
    turns = dialogue["turns"]
    for index, turn in enumerate(turns):
        question = ANSWER_CUE.sub("", turn["prompt"])
        if turn["modality"] == "V" and turn.get("image") and with_images:
            question = f"{IMAGE_PLACEHOLDER}\n{question}"
            images.append(turn["image"])
        messages.append({"role": "user", "content": question})
        if index < len(turns) - 1:
            messages.append({"role": "assistant", "content": turn["choices"][turn["answer"]]})
    return messages, images


def plain_dialogue_text(dialogue: dict[str, Any], with_images: bool) -> tuple[str, list[str]]:
    """For a tokenizer without a chat template: the turns as plain text ("Question: ...\nAnswer: gold"),
    a blank line between them, ending where the scored answer starts.

    Without images (a text-only model) a visual turn keeps its question and loses its picture.
    """
    parts, images = [], []
    for index, turn in enumerate(dialogue["turns"]):
        prompt = turn["prompt"]
        if turn["modality"] == "V" and turn.get("image") and with_images:
            prompt = f"{IMAGE_PLACEHOLDER}\n{prompt}"
            images.append(turn["image"])
        if index < len(dialogue["turns"]) - 1:
            prompt = f"{prompt}{TARGET_DELIMITER}{turn['choices'][turn['answer']]}"
        parts.append(prompt)
    return TURN_DELIMITER.join(parts), images


def has_chat_template(encoder: Any) -> bool:
    """Whether a tokenizer, or a processor or its tokenizer, carries a chat template."""
    tokenizer = getattr(encoder, "tokenizer", encoder)
    return bool(getattr(encoder, "chat_template", None) or getattr(tokenizer, "chat_template", None))


def render_dialogue(dialogue: dict[str, Any], encoder: Any, with_images: bool) -> RenderedDialogue:
    """Through the chat template when the tokenizer has one (WINGS.md: a real dialogue), else plain text."""
    if not has_chat_template(encoder):
        context, images = plain_dialogue_text(dialogue, with_images)
        return RenderedDialogue(context, images, TARGET_DELIMITER, chat_template=False)
    messages, images = dialogue_messages(dialogue, with_images)
    if hasattr(encoder, "render"):  # a WingsProcessor: its own template, else its tokenizer's
        context = encoder.render(messages, add_generation_prompt=True)
    else:
        context = encoder.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return RenderedDialogue(context, images, "", chat_template=True)


# ------------------------------------------------------------------------------------------- scoring
def _leading_bos(tokenizer: Any) -> list[int]:
    # The tokenizer's own BOS, if it adds one; the processor's encode_text adds no special tokens.
    bos_id = tokenizer.bos_token_id
    return [bos_id] if bos_id is not None and tokenizer.encode("a")[:1] == [bos_id] else []


def _context_and_targets(encoder: Any, rendered: RenderedDialogue, choice: str) -> tuple[list[int], list[int], dict]:
    """Token ids of the context (BOS included) and of the scored choice, and the image inputs, if any."""
    tokenizer = getattr(encoder, "tokenizer", encoder)
    scored = rendered.context + rendered.target_delimiter + choice
    if rendered.images:  # the processor expands each placeholder into the image's visual tokens
        context_ids = encoder.encode_text(rendered.context, rendered.images)["input_ids"].tolist()
        whole = encoder.encode_text(scored, rendered.images)
        whole_ids = whole["input_ids"].tolist()
        prefix = [] if rendered.chat_template else _leading_bos(tokenizer)  # a template writes its own BOS
        extra = {"pixel_values": whole["pixel_values"]}
    elif rendered.chat_template:
        context_ids = tokenizer.encode(rendered.context, add_special_tokens=False)
        whole_ids = tokenizer.encode(scored, add_special_tokens=False)
        prefix, extra = [], {}
    else:  # lm-evaluation-harness' split of plain text
        context_ids, targets = encode_pair(tokenizer, rendered.context, rendered.target_delimiter + choice)
        return context_ids, targets, {}
    if whole_ids[: len(context_ids)] != context_ids or len(whole_ids) == len(context_ids):
        raise ValueError(f"choice {choice!r} changes the tokenisation of its context; cannot score it")
    return prefix + context_ids, whole_ids[len(context_ids) :], extra


@torch.no_grad()
def _choice_loglikelihoods(model: Any, encoder: Any, rendered: RenderedDialogue, choices: list[str]) -> list[float]:
    """Summed log-probability of each choice as the answer to the dialogue's last question."""
    parameter = next(model.parameters())
    scores = []
    for choice in choices:
        context_ids, targets, extra = _context_and_targets(encoder, rendered, choice)
        inputs = torch.tensor([context_ids + targets])
        kwargs = {name: value.to(parameter.device, parameter.dtype) for name, value in extra.items()}
        logits = model(input_ids=inputs[:, :-1].to(parameter.device), **kwargs).logits[0, -len(targets) :].float()
        log_probs = torch.log_softmax(logits, -1)
        scores.append(float(log_probs.gather(-1, torch.tensor(targets, device=parameter.device)[:, None]).sum()))
    return scores


def evaluate_iit(
    model: Any, processor_or_tokenizer: Any, path: str | Path, limit: int | None = None, progress: bool = False
) -> dict[str, Any]:
    """Accuracy on an IIT file, per configuration and overall (log-likelihood of each choice of the last turn).

    With a `WingsProcessor` and a model with a vision tower, visual turns show their image; with a plain
    tokenizer (a base LLM) they are scored from their text alone, and `images_seen` says so. `chat_template`
    says whether the dialogues went through the tokenizer's chat template or as plain text.
    """
    dialogues = read_iit(path)[:limit] if limit else read_iit(path)
    with_images = hasattr(processor_or_tokenizer, "encode_text") and getattr(model, "vision_tower", None) is not None
    correct: dict[str, list[float]] = defaultdict(list)
    for dialogue in tqdm(dialogues, desc="iit", disable=not progress, leave=False):
        rendered = render_dialogue(dialogue, processor_or_tokenizer, with_images)
        last = dialogue["turns"][-1]
        scores = _choice_loglikelihoods(model, processor_or_tokenizer, rendered, list(last["choices"]))
        correct[dialogue["config"]].append(float(int(np.argmax(scores)) == int(last["answer"])))
    configs = {c: {"acc": float(np.mean(v)), "num_samples": len(v)} for c, v in correct.items()}
    ordered = {c: configs[c] for c in CONFIGURATIONS if c in configs} | configs
    everything = [value for values in correct.values() for value in values]
    return {
        "acc": float(np.mean(everything)) if everything else float("nan"),
        "acc_macro": float(np.mean([c["acc"] for c in configs.values()])) if configs else float("nan"),
        "num_samples": len(everything),
        "configs": ordered,
        "images_seen": with_images,
        "chat_template": has_chat_template(processor_or_tokenizer),
    }
