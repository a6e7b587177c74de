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


# Stage 1's mix by question kind. Colour (8 answers) is learnt from several times more answers than shape (3); the
# yes/no questions teach what the question text predicts. Measured (docs/results/demo.md, "The stage-1 mix"): 350
# stage-1 steps on this mix answered 93% of colour questions against 84-86% on the earlier mix (every colour
# question, half the shape ones, as many yes/no: 34 / 16 / 50%), yes/no at the question prior on both, and the
# demo's open answers rose from 92.3 ± 4.2 to 93.9 ± 1.7 over 3 seeds; with 25% yes/no, yes/no fell below the prior.
ALIGN_SHARES = {"colour": 0.45, "shape": 0.15, "yes/no": 0.40}


def check_align_shares(shares: dict[str, float]) -> dict[str, float]:
    """`shares` when it gives colour a share above 0, shape and yes/no one of at least 0, summing to 1; else a
    ValueError."""
    if set(shares) != {"colour", "shape", "yes/no"} or not shares["colour"] > 0 or min(shares.values()) < 0:
        raise ValueError(
            f"stage-1 shares must give colour (> 0), shape and yes/no (>= 0) a share each, got {shares}: "
            f"for example {ALIGN_SHARES}"
        )
    if abs(sum(shares.values()) - 1) > 1e-6:
        raise ValueError(f"stage-1 shares must sum to 1 (they are fractions of the set), got {shares}")
    return shares


def align_file_name(shares: dict[str, float] | None = None) -> str:
    """The stage-1 set's file name, by its mix in percent: "align-45-15-40.json" (colour, shape, yes/no), so that
    a set of another mix is another file (and a demo stage trained on one is not reused for the other)."""
    shares = check_align_shares(ALIGN_SHARES if shares is None else shares)
    return "align-" + "-".join(str(round(100 * shares[kind])) for kind in ("colour", "shape", "yes/no")) + ".json"


def write_align_set(
    data_dir: str | os.PathLike, seed: int = 0, name: str | None = None, shares: dict[str, float] | None = None
) -> dict[str, int]:
    """Stage 1's data, one question per conversation, from the training questions written by `convert_easy_vqa`:
    every colour question, and shape and yes/no questions drawn (seeded) so that each kind has its share of the set
    (`shares`, default `ALIGN_SHARES`; a kind with too few questions gives all it has). Stage 1 is the alignment
    stage (WINGS.md trains it on image-caption pairs: what the image shows); easy-vqa's own mix is three yes/no
    questions in four, so a stage trained on it sees few colour and shape answers. Written to `name` (default
    `align_file_name(shares)`). Returns the counts written."""
    shares = check_align_shares(ALIGN_SHARES if shares is None else shares)
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
    total = len(kinds["colour"]) / shares["colour"]  # every colour question sets the size of the set
    chosen = {"colour": kinds["colour"]}
    for kind in ("shape", "yes/no"):
        chosen[kind] = shuffler.sample(kinds[kind], min(round(total * shares[kind]), len(kinds[kind])))
    align = [
        _conversation(f"align-{kind.replace('/', '-')}-{n}", image, [(question, answer)])
        for kind, questions in chosen.items()
        for n, (image, question, answer) in enumerate(questions)
    ]
    shuffler.shuffle(align)
    (folder / (name or align_file_name(shares))).write_text(json.dumps(align, indent=1) + "\n", encoding="utf-8")
    return {kind: len(questions) for kind, questions in chosen.items()}
