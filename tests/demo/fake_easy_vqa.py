"""A miniature of easy-vqa's raw data (the `easy-vqa` package's layout), for the demo's and the experiments' tests."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

COLOURS = ["red", "green", "blue"]
SHAPES = ["circle", "triangle"]


def fake_easy_vqa(root: Path) -> Path:
    """easy-vqa 1.0's raw layout: answers.txt, {train,test}/questions.json and images/<id>.png."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "answers.txt").write_text("\n".join(["yes", "no", *COLOURS, *SHAPES]) + "\n")
    for split, count in (("train", 6), ("test", 3)):
        (root / split / "images").mkdir(parents=True)
        questions = []
        for image_id in range(count):
            colour = COLOURS[image_id % 3]
            Image.new("RGB", (64, 64), colour).save(root / split / "images" / f"{image_id}.png")
            shape = SHAPES[image_id % 2]
            questions += [
                ["what color is the shape?", colour, image_id],
                ["what shape is in the image?", shape, image_id],
                ["is there a circle?", "yes" if shape == "circle" else "no", image_id],
            ]
        (root / split / "questions.json").write_text(json.dumps(questions))
    return root
