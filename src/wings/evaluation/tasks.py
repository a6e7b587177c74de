"""The task registry: which evaluations exist, where their data come from, and how prompts are written.

A multiple-choice task turns each record into a `Doc` (question, choices, gold index) with the prompt
format of lm-evaluation-harness, so scores are comparable with published numbers. Data come from local
files (`data_dir`, in each benchmark's published layout) or, when online with `datasets` installed,
from the Hugging Face hub. Besides the names in `TASKS`, two prefixes take a user file:
`mc:FILE.jsonl` (the generic multiple-choice schema, see `load_generic_jsonl`) and `ppl:FILE.txt`
(perplexity of a text file). Multimodal tasks (`text_only=False`, see `evaluation/vqa.py`): `easy_vqa`
(with --data-dir), `easyvqa:DIR`, `vqa:FILE.jsonl`, `mmbench:FILE.tsv`, and `iit:FILE` (the IIT benchmark
of `wings.evaluation.iit`). `kind` says which scorer runs a task; `text_only` which tasks enter the
forgetting average.
"""

from __future__ import annotations

import csv
import os
import re
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from wings.data.formats import read_jsonl, required_field
from wings.evaluation import vqa
from wings.evaluation.task_types import Doc, Task

MMLU_SUBJECTS: tuple[str, ...] = (
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
)


# ---------------------------------------------------------------- file helpers


def _find(data_dir: Path | None, task: str, candidates: list[str]) -> Path | None:
    """The first existing candidate under `data_dir`; None when no local copy exists."""
    if data_dir is None:
        return None
    for candidate in candidates:
        if (data_dir / candidate).is_file():
            return data_dir / candidate
    return None


SPLIT_NAMES = ("train", "validation", "test", "dev", "val", "valid")  # spellings looked for when a split is missing


def local_splits(data_dir: Path | None, task: str, names_of: Callable[[str], list[str]]) -> list[str]:
    """The splits of a benchmark that `data_dir` holds (one name per file found)."""
    found: dict[Path, str] = {}
    for split in SPLIT_NAMES:
        path = _find(data_dir, task, names_of(split))
        if path is not None:
            found.setdefault(path, split)
    return list(found.values())


def _hub_records(
    task: str,
    hub_path: str,
    hub_name: str | None,
    split: str,
    names_of: Callable[[str], list[str]],
    data_dir: Path | None,
) -> list[dict[str, Any]]:
    """Records from the Hugging Face hub when no --data-dir is given and the hub may be used; otherwise (offline,
    or a --data-dir without this split) a one-line error naming the files looked for and the splits that are there."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if data_dir is not None:
        present = local_splits(data_dir, task, names_of)
        suggested = next((name for name in present if name != "train"), present[0]) if present else None
        there = (
            f"splits there: {', '.join(present)} (pass --split {suggested})"
            if present
            else f"no split of it is there; put a copy of {hub_path} there"
        )
        raise FileNotFoundError(
            f"task {task}: split '{split}' is not under --data-dir {data_dir} "
            f"(looked for {', '.join(names_of(split))}); {there}"
        )
    try:  # an optional package, needed only to read the hub
        import datasets
    except ImportError:
        datasets = None
    if offline or datasets is None:
        why = "HF_HUB_OFFLINE is set" if offline else "the `datasets` package is not installed"
        raise FileNotFoundError(
            f"task {task}: no --data-dir given and the hub is not usable ({why}); "
            f"pass --data-dir with a local copy of {hub_path} (split '{split}')"
        )
    return [dict(row) for row in datasets.load_dataset(hub_path, hub_name, split=split)]


# ---------------------------------------------------------------- loaders, one per benchmark


def _arc_loader(subset: str) -> Callable[[Path | None, str], list[Doc]]:
    task = subset.lower().replace("-", "_")

    def names_of(split: str) -> list[str]:
        return [f"arc/{subset}-{split}.jsonl", f"{subset}-{split}.jsonl", f"{subset}/{split}.jsonl"]

    def load(data_dir: Path | None, split: str) -> list[Doc]:
        path = _find(data_dir, subset, names_of(split))
        records = read_jsonl(path) if path else _hub_records(task, "allenai/ai2_arc", subset, split, names_of, data_dir)
        docs = []
        for index, record in enumerate(records):
            where = f"{path or 'allenai/ai2_arc'} record {index + 1}"
            choices = required_field(record, "choices", where)
            labels, key = list(choices["label"]), str(required_field(record, "answerKey", where))
            if key not in labels:
                raise ValueError(f"{where}: answerKey {key!r} is not one of the labels {labels}")
            question = f"Question: {required_field(record, 'question', where)}\nAnswer:"
            docs.append(Doc(str(record.get("id", index)), question, list(choices["text"]), labels.index(key)))
        return docs

    return load


def _mmlu_prompt(question: str, options: list[str]) -> str:
    letters = "".join(f"\n{letter}. {option}" for letter, option in zip("ABCD", options))
    return f"{question.strip()}{letters}\nAnswer:"


def _mmlu_loader(subjects: tuple[str, ...]) -> Callable[[Path | None, str], list[Doc]]:
    def names_of(subject: str, split: str) -> list[str]:
        return [f"mmlu/{split}/{subject}_{split}.csv", f"{split}/{subject}_{split}.csv", f"{subject}_{split}.csv"]

    def load(data_dir: Path | None, split: str) -> list[Doc]:
        docs, chosen = [], subjects
        if len(subjects) > 1:
            # Overall MMLU over a partial local copy scores the subjects present (e.g. a val split of 7 subjects).
            local = [s for s in subjects if _find(data_dir, "mmlu", names_of(s, split))]
            if local and len(local) < len(subjects):
                print(
                    f"mmlu: {len(local)} of {len(subjects)} subjects found locally for split '{split}'; "
                    "scoring those (per-subject scores are in the results)",
                    file=sys.stderr,
                )
            chosen = tuple(local) or subjects
        for subject in chosen:
            path = _find(data_dir, "mmlu", names_of(subject, split))
            if path is None:
                of_subject = lambda name: names_of(subject, name)  # noqa: E731
                hub = _hub_records(f"mmlu_{subject}", "cais/mmlu", subject, split, of_subject, data_dir)
                rows = [[r["question"], *r["choices"], "ABCD"[int(r["answer"])]] for r in hub]
            else:
                with open(path, encoding="utf-8", newline="") as handle:
                    rows = list(csv.reader(handle))
            for index, row in enumerate(rows):
                where = f"{path or 'cais/mmlu'} row {index + 1}"
                if len(row) != 6 or row[5].strip() not in ("A", "B", "C", "D"):
                    raise ValueError(
                        f"{where}: expected 6 columns (question, A, B, C, D, answer letter), got {row[:6]}"
                    )
                gold = "ABCD".index(row[5].strip())
                docs.append(
                    Doc(f"{subject}/{index}", _mmlu_prompt(row[0], row[1:5]), ["A", "B", "C", "D"], gold, group=subject)
                )
        return docs

    return load


def _mmlu_description(doc: Doc) -> str:
    subject = (doc.group or "").replace("_", " ")
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n"


def _piqa_names(split: str) -> list[str]:
    stem = {"validation": "valid"}.get(split, split)
    return [f"piqa/{stem}.jsonl", f"{stem}.jsonl"]


def _load_piqa(data_dir: Path | None, split: str) -> list[Doc]:
    stem = {"validation": "valid"}.get(split, split)
    path = _find(data_dir, "piqa", _piqa_names(split))
    if path is None:
        records = _hub_records("piqa", "baber/piqa", None, split, _piqa_names, data_dir)
    else:
        records = read_jsonl(path)
        labels_path = path.with_name(f"{stem}-labels.lst")
        if not labels_path.is_file():
            raise FileNotFoundError(f"task piqa: {path} needs its labels file {labels_path} (one 0/1 per line)")
        labels = [line.strip() for line in labels_path.read_text().splitlines() if line.strip()]
        if len(labels) != len(records):
            raise ValueError(f"task piqa: {path} has {len(records)} records but {labels_path} has {len(labels)} labels")
        for record, label in zip(records, labels):
            record["label"] = label
    docs = []
    for index, record in enumerate(records):
        where = f"{path or 'baber/piqa'} record {index + 1}"
        label = str(required_field(record, "label", where))
        if label not in ("0", "1"):
            raise ValueError(f"{where}: label {label!r} is not 0 or 1")
        choices = [required_field(record, "sol1", where), required_field(record, "sol2", where)]
        docs.append(Doc(str(index), f"Question: {required_field(record, 'goal', where)}\nAnswer:", choices, int(label)))
    return docs


def _hellaswag_preprocess(text: str) -> str:
    # lm-eval's cleaning: WikiHow "[title]" markers become sentence breaks, other bracketed artefacts go.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_names(split: str) -> list[str]:
    return [
        f"hellaswag/hellaswag_{split.replace('validation', 'val')}.jsonl",
        f"hellaswag/{split}.jsonl",
        f"hellaswag_{split.replace('validation', 'val')}.jsonl",
    ]


def _load_hellaswag(data_dir: Path | None, split: str) -> list[Doc]:
    path = _find(data_dir, "hellaswag", _hellaswag_names(split))
    records = (
        read_jsonl(path)
        if path
        else _hub_records("hellaswag", "Rowan/hellaswag", None, split, _hellaswag_names, data_dir)
    )
    docs = []
    for index, record in enumerate(records):
        where = f"{path or 'Rowan/hellaswag'} record {index + 1}"
        context = required_field(record, "ctx_a", where) + " " + required_field(record, "ctx_b", where).capitalize()
        query = _hellaswag_preprocess(required_field(record, "activity_label", where) + ": " + context)
        endings = [_hellaswag_preprocess(ending) for ending in required_field(record, "endings", where)]
        docs.append(Doc(str(record.get("ind", index)), query, endings, int(required_field(record, "label", where))))
    return docs


def _openbookqa_names(split: str) -> list[str]:
    return [f"openbookqa/{split}.jsonl", f"openbookqa/main/{split}.jsonl"]


def _load_openbookqa(data_dir: Path | None, split: str) -> list[Doc]:
    path = _find(data_dir, "openbookqa", _openbookqa_names(split))
    records = (
        read_jsonl(path)
        if path
        else _hub_records("openbookqa", "allenai/openbookqa", "main", split, _openbookqa_names, data_dir)
    )
    docs = []
    for index, record in enumerate(records):
        where = f"{path or 'allenai/openbookqa'} record {index + 1}"
        choices = required_field(record, "choices", where)
        labels, key = list(choices["label"]), str(required_field(record, "answerKey", where)).lstrip()
        if key not in labels:
            raise ValueError(f"{where}: answerKey {key!r} is not one of the labels {labels}")
        docs.append(
            Doc(
                str(record.get("id", index)),
                required_field(record, "question_stem", where),
                list(choices["text"]),
                labels.index(key),
            )
        )
    return docs


def _winogrande_names(split: str) -> list[str]:
    stem = {"validation": "dev", "train": "train_xl"}.get(split, split)
    return [f"winogrande/{stem}.jsonl", f"winogrande/{split}.jsonl", f"{stem}.jsonl"]


def _load_winogrande(data_dir: Path | None, split: str) -> list[Doc]:
    path = _find(data_dir, "winogrande", _winogrande_names(split))
    if path is not None:
        records = read_jsonl(path)
    else:
        records = _hub_records("winogrande", "allenai/winogrande", "winogrande_xl", split, _winogrande_names, data_dir)
    docs = []
    for index, record in enumerate(records):
        where = f"{path or 'allenai/winogrande'} record {index + 1}"
        sentence = required_field(record, "sentence", where)
        if "_" not in sentence or str(required_field(record, "answer", where)) not in ("1", "2"):
            raise ValueError(f"{where}: needs a '_' blank in 'sentence' and 'answer' 1 or 2")
        blank = sentence.index("_")
        # Partial evaluation (lm-eval): each option fills the blank as context; the rest of the sentence is scored.
        contexts = [
            sentence[:blank] + required_field(record, "option1", where),
            sentence[:blank] + required_field(record, "option2", where),
        ]
        target = sentence[blank + 1 :].strip()
        docs.append(
            Doc(str(record.get("qID", index)), "", contexts, int(record["answer"]) - 1, shared_continuation=target)
        )
    return docs


def load_generic_jsonl(path: Path, group_field: str | None = None) -> list[Doc]:
    """The generic multiple-choice schema, one JSON object a line.

    Fields: `question` (str), `choices` (list of str, at least two), `answer` (the index of the correct
    choice, its letter "A".., or its exact text); optional `id`, `category`. Prompt: "Question: ...\\nAnswer:".
    """
    docs = []
    for index, record in enumerate(read_jsonl(path)):
        where = f"{path} record {index + 1}"
        question, choices, answer = (required_field(record, key, where) for key in ("question", "choices", "answer"))
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{where}: 'choices' must be a list of at least two strings")
        if isinstance(answer, bool) or not isinstance(answer, (int, str)):
            raise ValueError(f"{where}: 'answer' must be an index, a letter or the text of a choice")
        if isinstance(answer, int):
            gold = answer
        elif answer in choices:
            gold = choices.index(answer)
        elif len(answer) == 1 and answer.isalpha():
            gold = ord(answer.upper()) - ord("A")
        else:
            raise ValueError(f"{where}: 'answer' {answer!r} is neither a letter nor the text of a choice")
        if not 0 <= gold < len(choices):
            raise ValueError(f"{where}: 'answer' {answer!r} is out of range for {len(choices)} choices")
        group = record.get(group_field) if group_field else None
        docs.append(Doc(str(record.get("id", index)), f"Question: {question}\nAnswer:", choices, gold, group=group))
    return docs


def retention_file(name: str) -> Path:
    """A file of the built-in retention suite (package data)."""
    return Path(str(resources.files("wings.evaluation").joinpath("retention", name)))


def _load_retention(data_dir: Path | None, split: str) -> list[Doc]:
    return load_generic_jsonl(retention_file("questions.jsonl"), group_field="category")


# ---------------------------------------------------------------- the registry

TASKS: dict[str, Task] = {
    "arc_easy": Task("arc_easy", "multiple_choice", _arc_loader("ARC-Easy"), split="test"),
    "arc_challenge": Task("arc_challenge", "multiple_choice", _arc_loader("ARC-Challenge"), split="test"),
    "mmlu": Task(
        "mmlu",
        "multiple_choice",
        _mmlu_loader(MMLU_SUBJECTS),
        split="test",
        fewshot_split="dev",
        fewshot_sampler="first_n",
        description=_mmlu_description,
        metrics=("acc",),
    ),
    "piqa": Task("piqa", "multiple_choice", _load_piqa),
    "hellaswag": Task("hellaswag", "multiple_choice", _load_hellaswag),
    "openbookqa": Task("openbookqa", "multiple_choice", _load_openbookqa, split="test"),
    "winogrande": Task("winogrande", "multiple_choice", _load_winogrande, metrics=("acc",)),
    # The offline retention suite: shipped questions, and the base LLM's continuations of shipped prompts.
    "retention_mc": Task("retention_mc", "multiple_choice", _load_retention, split="test", fewshot_split=None),
    "retention_lm": Task(
        "retention_lm", "retention_generation", split="test", fewshot_split=None, metrics=("perplexity", "kl")
    ),
}
for _subject in MMLU_SUBJECTS:
    TASKS[f"mmlu_{_subject}"] = Task(
        f"mmlu_{_subject}",
        "multiple_choice",
        _mmlu_loader((_subject,)),
        split="test",
        fewshot_split="dev",
        fewshot_sampler="first_n",
        description=_mmlu_description,
        metrics=("acc",),
    )


def _load_easy_vqa(data_dir: Path | None, split: str) -> list[Any]:
    if data_dir is None:
        raise FileNotFoundError(
            "task easy-vqa: pass --data-dir with the folder of `wings data easy-vqa --out DIR`, "
            "or name the folder directly: easy-vqa:DIR"
        )
    return vqa.load_easy_vqa(data_dir)


EASY_VQA_METRICS = ("acc", "acc_yes_no", "acc_open")
TASKS["easy_vqa"] = Task(
    "easy_vqa", "vqa", _load_easy_vqa, split="test", fewshot_split=None, metrics=EASY_VQA_METRICS, text_only=False
)

# Shorthands expanding to several tasks.
TASK_GROUPS: dict[str, list[str]] = {"retention": ["retention_mc", "retention_lm"]}


VISUAL_PREFIXES = ("easyvqa:", "vqa:", "mmbench:", "iit:")


def _visual_task(name: str) -> Task:
    """`easyvqa:DIR`, `vqa:FILE.jsonl`, `mmbench:FILE.tsv` (VQA scorers) and `iit:FILE` (the IIT benchmark)."""
    prefix, _, file_name = name.partition(":")
    path = Path(file_name).expanduser()
    if prefix == "easyvqa":
        vqa.easy_vqa_questions_file(path)  # fails now, naming the folder, if the test file is missing
        return Task(
            name,
            "vqa",
            lambda _d, _s: vqa.load_easy_vqa(path),
            split="test",
            fewshot_split=None,
            metrics=EASY_VQA_METRICS,
            text_only=False,
            path=path,
        )
    if not path.is_file():
        raise FileNotFoundError(f"task {name}: file {path} does not exist")
    if prefix == "iit":
        return Task(
            name, "iit", split="file", fewshot_split=None, metrics=("acc", "acc_macro"), text_only=False, path=path
        )
    loader = vqa.load_vqa_jsonl if prefix == "vqa" else vqa.load_mmbench_tsv
    return Task(
        name,
        "vqa",
        lambda _d, _s: loader(path),
        split="file",
        fewshot_split=None,
        metrics=("acc",),
        text_only=False,
        path=path,
    )


def get_task(name: str) -> Task:
    """The task for a registered name, `mc:FILE.jsonl`, `ppl:FILE` or a visual prefix (`VISUAL_PREFIXES`)."""
    name = canonical_name(name)
    if name.startswith(VISUAL_PREFIXES):
        return _visual_task(name)
    if name.startswith(("mc:", "ppl:")):
        prefix, _, file_name = name.partition(":")
        path = Path(file_name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"task {name}: file {path} does not exist")
        if prefix == "ppl":
            return Task(name, "perplexity", split="file", fewshot_split=None, metrics=("perplexity",), path=path)
        return Task(
            name,
            "multiple_choice",
            lambda _d, _s: load_generic_jsonl(path, "category"),
            split="file",
            fewshot_split=None,
            path=path,
        )
    if name not in TASKS:
        known = ", ".join(sorted(set(TASKS) - {f"mmlu_{s}" for s in MMLU_SUBJECTS}) + sorted(TASK_GROUPS))
        raise ValueError(
            f"unknown task '{name}'; known tasks: {known}, mmlu_<subject>, mc:FILE.jsonl, ppl:FILE, "
            "easy-vqa (with --data-dir), easy-vqa:DIR, vqa:FILE.jsonl, mmbench:FILE.tsv, iit:FILE"
        )
    return TASKS[name]


def canonical_name(name: str) -> str:
    """The data set is spelled `easy-vqa` as in `wings data easy-vqa`: `easy-vqa` and `easy-vqa:DIR` are the
    registered `easy_vqa` and `easyvqa:DIR` (the names results are stored under)."""
    if name == "easy-vqa":
        return "easy_vqa"
    return "easyvqa:" + name[len("easy-vqa:") :] if name.startswith("easy-vqa:") else name


def expand_task_names(names: list[str]) -> list[str]:
    """Task names with groups expanded and comma lists split, duplicates dropped, order kept."""
    expanded: list[str] = []
    for entry in names:
        for name in (canonical_name(part.strip()) for part in entry.split(",") if part.strip()):
            for task_name in TASK_GROUPS.get(name, [name]):
                if task_name not in expanded:
                    expanded.append(task_name)
    return expanded
