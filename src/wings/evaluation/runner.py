"""Evaluate several models and their base LLM on the same tasks with the same prompts.

`load_eval_model` accepts a registry name, a Hugging Face causal-LM directory or id, or a WINGS
checkpoint directory (its tokenizer is saved beside it, and its processor when it has one, so visual
tasks show it images; its base LLM is read from the config). Text tasks use the tokenizer only.
`evaluate_models` runs every task on every model, the base LLM first, in a fixed order with fixed
seeds, and returns the results that `report.py` writes.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

import wings  # noqa: F401  (registers the WINGS classes with the Auto classes)
from wings.data.formats import read_jsonl
from wings.evaluation import vqa
from wings.evaluation.cache import BaseResultCache
from wings.evaluation.divergence import continuation_divergences, reference_sequences
from wings.evaluation.iit import evaluate_iit
from wings.evaluation.multiple_choice import evaluate_multiple_choice
from wings.evaluation.perplexity import file_perplexity
from wings.evaluation.task_types import Doc, Task
from wings.evaluation.tasks import EASY_VQA_METRICS, expand_task_names, get_task, retention_file
from wings.model.processing_wings import WingsProcessor
from wings.model.registry import list_llms, resolve_llm

SEED = 1234


@dataclass
class EvalModel:
    """A model ready to score: its name in the report, the module, its tokenizer and its base LLM if known.

    `processor` (a `WingsProcessor`, WINGS checkpoints saved with one) lets visual tasks show images.
    """

    name: str
    model: Any
    tokenizer: Any
    base_llm: str | None = None
    is_wings: bool = False
    processor: Any = None

    @property
    def encoder(self) -> Any:
        """What visual tasks encode with: the processor when there is one, else the tokenizer (text alone)."""
        return self.processor if self.processor is not None else self.tokenizer


def _is_wings_checkpoint(path: Path) -> bool:
    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "wings"


def load_eval_model(name_or_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> EvalModel:
    """Load a registry name, an HF causal LM (directory or id) or a WINGS checkpoint directory for evaluation."""
    path = Path(name_or_path).expanduser()
    if path.is_dir() and _is_wings_checkpoint(path):
        try:
            model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
        except (ImportError, ValueError, KeyError) as error:
            raise ValueError(
                f"{path} is a WINGS checkpoint but the WINGS model classes could not be loaded ({error}); "
                "install the full `wings` package (src/wings/model/modeling_wings.py)"
            ) from error
        if not any(path.glob("tokenizer*")):
            raise FileNotFoundError(f"WINGS checkpoint {path} has no tokenizer saved beside it (tokenizer.json)")
        tokenizer = AutoTokenizer.from_pretrained(path)
        processor = _load_processor(path) if getattr(model, "vision_tower", None) is not None else None
        config = model.config
        text_config = getattr(config, "text_config", None)
        base = getattr(config, "base_llm", None) or getattr(text_config, "_name_or_path", None) or None
        return EvalModel(
            str(name_or_path), model.to(device).eval(), tokenizer, base_llm=base, is_wings=True, processor=processor
        )
    text = str(name_or_path)
    looks_local = text.startswith((".", "/", "~")) or "/" not in text
    if not path.exists() and looks_local and text.lower() not in _registry_names():
        raise FileNotFoundError(
            f"model '{name_or_path}': no such folder, and it is neither a registered LLM "
            f"({', '.join(_registry_names())}) nor a Hugging Face id (owner/name)"
        )
    resolved = resolve_llm(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=dtype)
    except OSError as error:  # hub id unreachable offline, or a directory without weights
        raise FileNotFoundError(f"model '{name_or_path}' could not be loaded from {resolved}: {error}") from error
    return EvalModel(str(name_or_path), model.to(device).eval(), tokenizer)


def _load_processor(path: Path) -> Any:
    """The WINGS processor saved beside a checkpoint, or None (visual tasks then see the text alone)."""
    if not any((path / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        return None
    return WingsProcessor.from_pretrained(path)


def _registry_names() -> list[str]:
    return list_llms()


@dataclass
class EvalSettings:
    """What to run and how: the same settings apply to every model, so scores are comparable."""

    tasks: list[str]
    data_dir: Path | None = None
    split: str | None = None  # overrides each task's default split
    num_fewshot: int = 0
    batch_size: int = 16
    limit: int | None = None  # first N documents per task, for quick checks
    max_new_tokens: int = 32  # length of the base LLM's reference continuations (retention_lm)
    ppl_max_tokens: int | None = None  # `ppl:` tasks score only the first N tokens of the file
    vqa_max_new_tokens: int = 8  # open VQA answers are a word or two
    vqa_prompt_suffix: str | None = None  # appended to `vqa:` questions, e.g. "Answer with one word."
    vqa_swap_limit: int | None = None  # easy-vqa's image-swap test on the first N scored questions (None: all)
    mc_mode: str | None = None  # visual multiple choice: "likelihood" or "letter" (default: letter for MMBench)
    progress: bool = True
    cache_dir: Path | None = None  # keeps the base LLM's scores and reference continuations between runs


def seed_everything(seed: int = SEED) -> None:
    """Fix every random source scoring could touch (few-shot draws use their own seeded generator)."""
    random.seed(seed)
    torch.manual_seed(seed)


def _load_docs(task: Task, settings: EvalSettings) -> tuple[list[Doc], list[Doc]]:
    split = settings.split or task.split
    docs = task.load(settings.data_dir, split)
    pool: list[Doc] = []
    if settings.num_fewshot:
        if task.fewshot_split is None:
            raise ValueError(f"task {task.name} has no few-shot split; run it with --num-fewshot 0")
        pool = task.load(settings.data_dir, task.fewshot_split)
    return docs, pool


def evaluate_models(models: list[EvalModel], base: EvalModel, settings: EvalSettings) -> dict[str, Any]:
    """Scores of the base LLM and every model on every task: {"models": {name: {task: metrics}}, ...}."""
    task_names = expand_task_names(settings.tasks)
    tasks = [get_task(name) for name in task_names]  # unknown names fail before any model runs
    everyone = [base] + [m for m in models if m is not base]
    results: dict[str, dict[str, Any]] = {m.name: {} for m in everyone}
    baselines: dict[str, dict[str, Any]] = {}
    cache = BaseResultCache(settings.cache_dir, base.model, base.tokenizer) if settings.cache_dir else None

    def cached(entry: EvalModel, kind: str, key: Any, compute: Any) -> Any:
        """The base LLM's result from the cache (computed and stored on a miss); other models always compute."""
        return cache.fetch(kind, key, compute) if cache is not None and entry is base else compute()

    for task in tasks:
        if task.kind == "multiple_choice":
            docs, pool = _load_docs(task, settings)
            for entry in tqdm(everyone, desc=task.name, disable=not settings.progress, leave=False):

                def score(entry: EvalModel = entry) -> dict[str, Any]:
                    seed_everything()
                    return evaluate_multiple_choice(
                        entry.model,
                        entry.tokenizer,
                        task,
                        docs,
                        pool,
                        settings.num_fewshot,
                        batch_size=settings.batch_size,
                        limit=settings.limit,
                        progress=settings.progress,
                    )

                key = [
                    task.name,
                    [vars(doc) for doc in docs],
                    [vars(doc) for doc in pool],
                    settings.num_fewshot,
                    settings.batch_size,
                    settings.limit,
                ]
                results[entry.name][task.name] = cached(entry, "mc", key, score)
        elif task.kind == "perplexity":
            for entry in everyone:

                def score(entry: EvalModel = entry) -> dict[str, Any]:
                    return file_perplexity(
                        entry.model,
                        entry.tokenizer,
                        task.path,
                        batch_size=max(1, settings.batch_size // 4),
                        max_tokens=settings.ppl_max_tokens,
                        progress=settings.progress and task.name,
                    )

                text = Path(task.path).read_text() if task.path and Path(task.path).is_file() else None
                key = [task.name, text, settings.batch_size, settings.ppl_max_tokens]
                results[entry.name][task.name] = cached(entry, "ppl", key, score) if text else score()
        elif task.kind == "retention_generation":
            prompts = [record["prompt"] for record in read_jsonl(retention_file("prompts.jsonl"))]
            prompts = prompts[: settings.limit] if settings.limit else prompts

            def generate() -> list[tuple[list[int], int]]:
                seed_everything()
                return reference_sequences(base.model, base.tokenizer, prompts, settings.max_new_tokens)

            stored = cached(base, "reference", [prompts, settings.max_new_tokens, "left-padded batches"], generate)
            sequences = [(list(ids), int(length)) for ids, length in stored]
            for entry in everyone:
                _check_same_tokenization(entry, base, prompts)
            # The base runs once per batch for every model (its logits are the reference of each KL).
            divergences = continuation_divergences(
                {entry.name: entry.model for entry in everyone},
                base.model,
                sequences,
                batch_size=settings.batch_size,
                progress=settings.progress,
            )
            for entry in everyone:
                results[entry.name][task.name] = divergences[entry.name]
        elif task.kind == "vqa":
            priors = _run_vqa(task, everyone, settings, results, cached)
            if priors is not None:
                baselines[task.name] = priors
        elif task.kind == "iit":
            for entry in everyone:
                seed_everything()
                results[entry.name][task.name] = evaluate_iit(
                    entry.model, entry.encoder, task.path, limit=settings.limit, progress=settings.progress
                )
        else:  # a registered kind without a scorer is a programming error, not a user one
            raise NotImplementedError(f"task kind {task.kind!r}")
    return {
        "base": base.name,
        "models": results,
        "tasks": {
            t.name: {
                "kind": t.kind,
                "metrics": list(t.metrics),
                "text_only": t.text_only,
                "split": settings.split or t.split,
            }
            | baselines.get(t.name, {})
            for t in tasks
        },
        "settings": {
            "num_fewshot": settings.num_fewshot,
            "batch_size": settings.batch_size,
            "limit": settings.limit,
            "data_dir": str(settings.data_dir) if settings.data_dir else None,
            "seed": SEED,
            "max_new_tokens": settings.max_new_tokens,
            "ppl_max_tokens": settings.ppl_max_tokens,
            "vqa_max_new_tokens": settings.vqa_max_new_tokens,
            "vqa_prompt_suffix": settings.vqa_prompt_suffix,
            "mc_mode": settings.mc_mode,
        },
        "base_of": {m.name: m.base_llm for m in models},
    }


def _run_vqa(
    task: Task, everyone: list[EvalModel], settings: EvalSettings, results: dict[str, Any], cached: Any = None
) -> dict | None:
    """A VQA task on every model; for easy-vqa also its blind baselines, returned as {"answer_prior",
    "question_prior"} and added to each model's scores as `prior_acc` and `question_prior_acc`."""
    every = task.load(settings.data_dir, settings.split or task.split)
    questions = every[: settings.limit] if settings.limit else every
    mc_mode = settings.mc_mode or ("letter" if task.name.startswith("mmbench:") else "likelihood")
    suffix = settings.vqa_prompt_suffix if task.name.startswith("vqa:") else None  # easy-vqa: the trained format
    priors = swapped = None
    if task.metrics == EASY_VQA_METRICS:
        if settings.limit:
            questions = vqa.easy_vqa_sample(every, settings.limit, SEED)
        # the same questions about other images: does the model look?
        swapped = vqa.image_swapped(questions[: settings.vqa_swap_limit], every)
        folder = task.path if task.path is not None else settings.data_dir
        try:
            train = vqa.easy_vqa_train_answers(folder)
            by_type = vqa.answer_prior(train)
            priors = {
                "answer_prior": vqa.prior_accuracy(questions, by_type),
                "question_prior": vqa.prior_accuracy(questions, by_type, vqa.question_prior(train)),
            }
        except FileNotFoundError as error:  # the model scores stand without it
            print(f"{task.name}: no answer-prior baseline ({error})", file=sys.stderr)
    for entry in everyone:

        def score(entry: EvalModel = entry) -> dict[str, Any]:
            seed_everything()
            return vqa.evaluate_vqa(
                entry.model,
                entry.encoder,
                questions,
                mc_mode=mc_mode,
                suffix=suffix,
                batch_size=settings.batch_size,
                max_new_tokens=settings.vqa_max_new_tokens,
                progress=settings.progress,
                swapped=swapped,
            )

        if cached is not None and not vqa.can_see_images(entry.model, entry.encoder):  # text alone: images unread
            key = [
                task.name,
                [{k: v for k, v in vars(q).items() if k != "image"} for q in questions],
                mc_mode,
                suffix,
                settings.batch_size,
                settings.vqa_max_new_tokens,
            ]
            scores = cached(entry, "vqa", key, score)
        else:
            scores = score()
        if priors is not None:
            scores["prior_acc"] = priors["answer_prior"]["acc"]
            scores["question_prior_acc"] = priors["question_prior"]["acc"]
        results[entry.name][task.name] = scores
    return priors


def _check_same_tokenization(entry: EvalModel, base: EvalModel, prompts: list[str]) -> None:
    """KL compares distributions token by token: the two tokenizers must agree on the text."""
    if entry is base:
        return
    for prompt in prompts[:5]:
        if entry.tokenizer.encode(prompt) != base.tokenizer.encode(prompt):
            raise ValueError(
                f"model {entry.name} and base {base.name} tokenize {prompt!r} differently; "
                "KL against the base needs the base LLM's tokenizer (pass the right --base)"
            )
