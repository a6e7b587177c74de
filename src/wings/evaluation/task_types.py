"""The two types every evaluation module shares: `Doc` (one multiple-choice item) and `Task` (a registered
evaluation). They live apart from the registry (`tasks.py`), which imports the loaders and scorers that use them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Doc:
    """One multiple-choice item, already in its prompt format.

    Normal tasks score `" " + choices[i]` after `question`. Partial evaluation (WinoGrande) sets
    `shared_continuation`: then each choice is a context and the same continuation is scored after each.
    `group` names a sub-score (the MMLU subject, the retention category).
    """

    id: str
    question: str
    choices: list[str]
    gold: int
    shared_continuation: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class Task:
    """A registered evaluation. `load(data_dir, split)` returns its docs in a fixed order."""

    name: str
    kind: str  # "multiple_choice", "perplexity", "retention_generation", "vqa" or "iit"
    load: Callable[[Path | None, str], list[Any]] | None = None  # Docs; `VisualQuestion`s for "vqa"
    split: str = "validation"
    fewshot_split: str | None = "train"
    fewshot_sampler: str = "random"  # "random" (seed 1234, as lm-eval) or "first_n" (MMLU)
    description: Callable[[Doc], str] | None = None
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    text_only: bool = True
    path: Path | None = None  # the user file of `mc:` / `ppl:` tasks
