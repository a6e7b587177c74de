"""The IIT benchmark (Interleaved Image-Text): build the dialogues and score a model on them.

Each dialogue is multi-turn; only its last question is scored. Earlier turns are other questions with
their gold answers, the ones most similar to the scored question (TF-IDF cosine over the question text by
default; any `embed(texts) -> (n, d)` array when given), never the scored question itself. Six
configurations by the modality of each turn, last turn scored:

    (T)  (T,T)  (T,T,T)  (T,T,V)  (T,V)  (V)

Text questions come from the evaluation tasks (`arc_easy`, `mmlu`, `mc:FILE.jsonl`, ...); visual ones from
the visual multiple-choice schema below (`load_visual_questions`) until the evaluation package has visual
tasks. The same seed and sources give the same file.

File: JSONL, one dialogue a line: `{"id", "config": "T,T,V", "turns": [{"modality", "source", "source_id",
"prompt", "choices", "answer", "image", "similarity"}, ...]}`; `answer` is the gold index; the last turn is
the scored one.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wings.data.formats import IMAGE_PLACEHOLDER

CONFIGURATIONS: tuple[str, ...] = ("T", "T,T", "T,T,T", "T,T,V", "T,V", "V")
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
    from wings.evaluation.tasks import get_task

    task = get_task(task_name)
    if task.kind != "multiple_choice":
        raise ValueError(f"IIT text source {task_name}: a {task.kind} task, not multiple choice")
    docs = task.load(data_dir, split or task.split)
    # Partial-evaluation items (WinoGrande) have no single question/answer pair to put in a dialogue.
    return [Question("T", task_name, doc.id, doc.question, tuple(doc.choices), doc.gold)
            for doc in docs if doc.shared_continuation is None and doc.question]  # fmt: skip


def load_visual_questions(path: str | Path) -> list[Question]:
    """Visual multiple choice, JSONL: `image` (path, relative to the file), `question`, `choices`, `answer`
    (index, letter or the text of a choice), optional `id`. Prompt: "Question: ...\\nAnswer:"."""
    from wings.evaluation.tasks import load_generic_jsonl

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"visual source {path} does not exist")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
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
    """(len(queries), len(pool)) cosine similarity of TF-IDF vectors fitted on both lists."""
    from sklearn.feature_extraction.text import TfidfVectorizer

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
    """Dialogues for every configuration: `per_config` scored questions each (fewer if a pool is smaller)."""
    pools = {"T": list(text), "V": list(visual)}
    dialogues = []
    for config_index, config in enumerate(configurations):
        modalities = config.split(",")
        if any(m not in pools for m in modalities):
            raise ValueError(f"configuration {config!r}: turns must be T or V")
        if any(not pools[m] for m in modalities):
            missing = "text (--text)" if not pools["T"] else "visual (--visual)"
            raise ValueError(f"configuration ({config}) needs {missing} questions; none were given")
        scored_pool = pools[modalities[-1]]
        rng = random.Random(seed * 1000 + config_index)
        scored = rng.sample(scored_pool, min(per_config, len(scored_pool)))
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
    dialogues = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        dialogue = json.loads(line)
        for turn_index, turn in enumerate(dialogue.get("turns") or [None]):
            if not isinstance(turn, dict) or not {"prompt", "choices", "answer", "modality"} <= set(turn):
                raise ValueError(f"{path}:{number} turn {turn_index}: needs modality, prompt, choices and answer")
            if not 0 <= int(turn["answer"]) < len(turn["choices"]):
                raise ValueError(f"{path}:{number} turn {turn_index}: answer {turn['answer']} out of range")
        dialogues.append(dialogue)
    return dialogues


# ------------------------------------------------------------------------------------------- scoring
def dialogue_context(dialogue: dict[str, Any], with_images: bool) -> tuple[str, list[str]]:
    """The text before the scored answer (earlier turns answered with their gold choice) and its images.

    Without images (a text-only model) a visual turn keeps its question and loses its picture.
    """
    parts, images = [], []
    for index, turn in enumerate(dialogue["turns"]):
        prompt = turn["prompt"]
        if turn["modality"] == "V" and turn.get("image") and with_images:
            prompt = f"{IMAGE_PLACEHOLDER}\n{prompt}"
            images.append(turn["image"])
        if index < len(dialogue["turns"]) - 1:
            prompt = f"{prompt} {turn['choices'][turn['answer']]}"
        parts.append(prompt)
    return TURN_DELIMITER.join(parts), images


@torch.no_grad()
def _choice_loglikelihoods(
    model: Any, encoder: Any, context: str, choices: list[str], images: list[str]
) -> list[float]:
    from wings.evaluation.multiple_choice import encode_pair

    device = next(model.parameters()).device
    scores = []
    for choice in choices:
        if images:  # the processor expands each placeholder into the image's visual tokens
            tokenizer = encoder.tokenizer
            bos_id = tokenizer.bos_token_id  # encode_text adds no special tokens; the tokenizer's own BOS, if any
            bos = [bos_id] if bos_id is not None and tokenizer.encode("a")[:1] == [bos_id] else []
            context_batch = encoder.encode_text(context, images)
            whole = encoder.encode_text(context + " " + choice, images)
            context_ids, whole_ids = context_batch["input_ids"].tolist(), whole["input_ids"].tolist()
            if whole_ids[: len(context_ids)] != context_ids:
                raise ValueError(f"choice {choice!r} changes the tokenisation of its context; cannot score it")
            inputs = torch.tensor([bos + whole_ids])
            targets = whole_ids[len(context_ids) :]
            kwargs = {"pixel_values": whole["pixel_values"].to(device, next(model.parameters()).dtype)}
        else:
            tokenizer = getattr(encoder, "tokenizer", encoder)
            context_ids, targets = encode_pair(tokenizer, context, " " + choice)
            inputs = torch.tensor([context_ids + targets])
            kwargs = {}
        logits = model(input_ids=inputs[:, :-1].to(device), **kwargs).logits[0, -len(targets) :].float()
        log_probs = torch.log_softmax(logits, -1)
        scores.append(float(log_probs.gather(-1, torch.tensor(targets, device=device)[:, None]).sum()))
    return scores


def evaluate_iit(
    model: Any, processor_or_tokenizer: Any, path: str | Path, limit: int | None = None, progress: bool = False
) -> dict[str, Any]:
    """Accuracy on an IIT file, per configuration and overall (log-likelihood of each choice of the last turn).

    With a `WingsProcessor` and a model with a vision tower, visual turns show their image; with a plain
    tokenizer (a base LLM) they are scored from their text alone, and `images_seen` says so.
    """
    from tqdm.auto import tqdm

    dialogues = read_iit(path)[:limit] if limit else read_iit(path)
    with_images = hasattr(processor_or_tokenizer, "encode_text") and getattr(model, "vision_tower", None) is not None
    correct: dict[str, list[float]] = defaultdict(list)
    for dialogue in tqdm(dialogues, desc="iit", disable=not progress, leave=False):
        context, images = dialogue_context(dialogue, with_images)
        last = dialogue["turns"][-1]
        scores = _choice_loglikelihoods(model, processor_or_tokenizer, context, list(last["choices"]), images)
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
    }
