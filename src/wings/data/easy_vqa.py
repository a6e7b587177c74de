"""Convert the easy-VQA data set (PyPI `easy-vqa==1.0`) into WINGS conversation files.

easy-VQA: 64x64 images of one coloured shape; 4,000 train images with 38,575 questions and 1,000
test images with 9,673 questions; 13 one-word answers (shapes, colours, yes/no). Each image's
questions become the turns of one conversation (several answers supervised per image encoding).

Output folder:
    images/{train,test}/<image id>.png
    train.json, test.json      LLaVA format; `answer_types` lists "yes/no" or "open" per assistant turn
    test_questions.jsonl       one line per test question: id, image, question, answer, type
    answers.json               the answer set, the yes/no answers, and counts per split
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from wings.data.formats import IMAGE_PLACEHOLDER

YES_NO = ("yes", "no")
EXPECTED_COUNTS = {"train": (4000, 38575), "test": (1000, 9673)}  # (images, questions) in easy-vqa 1.0


def easy_vqa_data_dir() -> Path:
    """The data folder shipped inside the installed `easy_vqa` package."""
    try:
        import easy_vqa
    except ImportError as error:
        raise ImportError(
            "easy-vqa is not installed: pip install easy-vqa==1.0 "
            "(the `data` extra of wings-mllm: pip install -e '.[data]' in its clone)"
        ) from error
    return Path(easy_vqa.__file__).parent / "data"


def question_type(answer: str) -> str:
    return "yes/no" if answer in YES_NO else "open"


def convert_easy_vqa(
    out_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    max_turns: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Write easy-VQA as conversations under `out_dir`; return the counts written.

    Args:
        data_dir: easy-VQA's data folder (default: the installed package's).
        max_turns: questions per conversation (None: all of an image's questions in one).
        seed: order of the training questions within each conversation (test keeps the original order).
    """
    source = Path(data_dir) if data_dir is not None else easy_vqa_data_dir()
    out = Path(out_dir)
    answers = [line.strip() for line in (source / "answers.txt").read_text().splitlines() if line.strip()]
    counts: dict[str, Any] = {"answers": len(answers)}
    for split in ("train", "test"):
        counts[split] = _convert_split(source, out, split, max_turns, random.Random(seed))
    with open(out / "answers.json", "w", encoding="utf-8") as handle:
        json.dump({"answers": answers, "yes_no": list(YES_NO), "counts": counts}, handle, indent=1)
    return counts


def _convert_split(
    source: Path, out: Path, split: str, max_turns: int | None, shuffler: random.Random
) -> dict[str, int]:
    with open(source / split / "questions.json", encoding="utf-8") as handle:
        questions = json.load(handle)  # [[question, answer, image id], ...]
    by_image: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for question, answer, image_id in questions:
        by_image[int(image_id)].append((question, answer))
    image_out = out / "images" / split
    image_out.mkdir(parents=True, exist_ok=True)
    records, question_lines = [], []
    for image_id in sorted(by_image):
        image_source = source / split / "images" / f"{image_id}.png"
        if not image_source.is_file():
            raise FileNotFoundError(
                f"{image_source}: image of {len(by_image[image_id])} {split} question(s) is missing"
            )
        shutil.copyfile(image_source, image_out / f"{image_id}.png")  # already 64x64 RGB PNG
        image = f"images/{split}/{image_id}.png"
        pairs = list(by_image[image_id])
        if split == "train":
            shuffler.shuffle(pairs)
        size = max_turns or len(pairs)
        for part, start in enumerate(range(0, len(pairs), size)):
            records.append(_conversation(f"{split}-{image_id}-{part}", image, pairs[start : start + size]))
        if split == "test":
            question_lines.extend(
                {"id": f"test-{image_id}-{n}", "image": image, "question": q, "answer": a, "type": question_type(a)}
                for n, (q, a) in enumerate(pairs)
            )
    with open(out / f"{split}.json", "w", encoding="utf-8") as handle:
        json.dump(records, handle, indent=1)
    if split == "test":
        with open(out / "test_questions.jsonl", "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(line) + "\n" for line in question_lines)
    return {
        "images": len(by_image),
        "questions": len(questions),
        "yes_no_questions": sum(question_type(answer) == "yes/no" for _, answer, _ in questions),
        "conversations": len(records),
    }


def _conversation(record_id: str, image: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """One LLaVA record: the image with the first question, then one turn per question."""
    turns = []
    for number, (question, answer) in enumerate(pairs):
        turns.append({"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{question}" if number == 0 else question})
        turns.append({"from": "gpt", "value": answer})
    return {
        "id": record_id,
        "image": image,
        "conversations": turns,
        "answer_types": [question_type(answer) for _, answer in pairs],
    }


def write_align_set(data_dir: str | os.PathLike, seed: int = 0, name: str = "align.json") -> dict[str, int]:
    """Stage 1's data, one question per conversation, from the training questions written by `convert_easy_vqa`:
    every colour question, half of the shape questions (a seeded half) and as many yes/no questions as those two
    together. Stage 1 is the alignment stage (WINGS.md trains it on image-caption pairs: what the image shows). In
    easy-vqa's own mix three questions in four are yes/no, whose question text alone predicts 85% of the answers,
    so a stage trained on it sees few colour and shape answers; shape is learnt from far fewer than colour
    (measured: docs/results/demo.md). Returns the counts written."""
    folder = Path(data_dir)
    records = json.loads((folder / "train.json").read_text(encoding="utf-8"))
    kinds: dict[str, list[tuple[str, str, str]]] = {"colour": [], "shape": [], "yes/no": []}
    for record in records:
        turns = record["conversations"]
        for position in range(0, len(turns) - 1, 2):
            question = turns[position]["value"].replace(IMAGE_PLACEHOLDER, "").strip()
            answer = turns[position + 1]["value"]
            kind = "yes/no" if question_type(answer) == "yes/no" else ("colour" if "colo" in question else "shape")
            kinds[kind].append((record["image"], question, answer))
    shuffler = random.Random(seed)
    chosen = {"colour": kinds["colour"], "shape": shuffler.sample(kinds["shape"], len(kinds["shape"]) // 2)}
    opened = len(chosen["colour"]) + len(chosen["shape"])
    chosen["yes/no"] = shuffler.sample(kinds["yes/no"], min(opened, len(kinds["yes/no"])))
    align = [
        _conversation(f"align-{kind.replace('/', '-')}-{n}", image, [(question, answer)])
        for kind, questions in chosen.items()
        for n, (image, question, answer) in enumerate(questions)
    ]
    shuffler.shuffle(align)
    (folder / name).write_text(json.dumps(align, indent=1) + "\n", encoding="utf-8")
    return {kind: len(questions) for kind, questions in chosen.items()}
