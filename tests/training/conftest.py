"""A tiny LLM directory (tokenizer with a chat template) and a small image+text data file for training tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Eight conversations: images of coloured squares with questions, and text-only ones, interleaved."""
    directory = tmp_path_factory.mktemp("tiny-data")
    (directory / "images").mkdir()
    colours = ["red", "green", "blue", "yellow"]
    records = []
    for number in range(8):
        colour = colours[number % 4]
        if number % 2 == 0:
            Image.new("RGB", (40, 30), colour).save(directory / "images" / f"{number}.png")
            records.append(
                {
                    "id": str(number),
                    "image": f"images/{number}.png",
                    "conversations": [
                        {"from": "human", "value": "<image>\nwhat color is it?"},
                        {"from": "gpt", "value": colour},
                        {"from": "human", "value": "is it a square?"},
                        {"from": "gpt", "value": "yes"},
                    ],
                }
            )
        else:
            records.append(
                {
                    "id": str(number),
                    "conversations": [
                        {"from": "human", "value": f"say {colour}"},
                        {"from": "gpt", "value": f"{colour} it is"},
                    ],
                }
            )
    (directory / "train.json").write_text(json.dumps(records))
    return directory


def tiny_config(llm_dir: Path, data_dir: Path, output_dir: Path, stage: str = "align", **training) -> dict:
    """A `wings train` configuration as a mapping (what a YAML file holds)."""
    return {
        "stage": stage,
        "model": {"llm": str(llm_dir), "vision": "siglip-scratch-32", "lorra_rank": 4},
        "data": {
            "datasets": [{"path": str(data_dir / "train.json"), "image_folder": str(data_dir)}],
            "max_length": 128,
        },
        "training": {
            "output_dir": str(output_dir),
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "logging_steps": 1,
            "save_steps": 1000,
            "report_to": "none",
            "use_cpu": True,
            "seed": 7,
            "warmup_steps": 0,
            **training,
        },
    }
