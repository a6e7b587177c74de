"""What the frozen vision tower's features say about easy-vqa's colour and shape, before any training.

For each hidden state of the tower of a WINGS model (the stem's, every block's and the head's for a CNN; the
embeddings' and every layer's for a ViT), a logistic-regression probe predicts the image's colour and shape from:
- `mean`: the state averaged over its tokens (one vector per image), what attention over the tokens can reach by
  spreading its weight evenly;
- `grid`: the state pooled to the head's 4 x 4 grid (or the tower's own token grid) and flattened, token by token.
Standardised features, fitted on training images, scored on test images (the images whose open questions name
both labels). The demo's projector reads the head (`vision_feature_layer=-1`): its row says what a linear read-out
of the demo's visual tokens can score. The majority class is printed beside.

    python -m experiments.easy_vqa_tower_probe --model runs/demo/wings-align --data runs/demo/data/easy-vqa
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from experiments.easy_vqa_scoring import image_labels
from wings.model.modeling_wings import WingsForConditionalGeneration
from wings.model.processing_wings import WingsProcessor


def as_grid(state: torch.Tensor) -> torch.Tensor:
    """Tokens (B, N, C) of a square map -> (B, C, side, side)."""
    side = math.isqrt(state.shape[1])
    if side * side != state.shape[1]:
        raise ValueError(f"{state.shape[1]} tokens are not a square map")
    return state.transpose(1, 2).reshape(state.shape[0], state.shape[2], side, side)


@torch.no_grad()
def tower_features(model: Any, processor: Any, images: list[Path], chunk_size: int = 50) -> list[dict[str, np.ndarray]]:
    """Per hidden state of the tower, {"mean": (images, C), "grid": (images, C x cells)}."""
    tower = model.vision_tower.eval()
    features: list[dict[str, list[np.ndarray]]] = []
    for start in range(0, len(images), chunk_size):
        pixels = processor.preprocess_images([str(path) for path in images[start : start + chunk_size]])
        output = tower(pixels.to(model.dtype), output_hidden_states=True)
        states = list(output.hidden_states)
        if not states or states[-1].shape != output.last_hidden_state.shape:  # a ViT's last entry before its norm
            states.append(output.last_hidden_state)
        final_side = math.isqrt(output.last_hidden_state.shape[1])
        if not features:
            features = [{"mean": [], "grid": []} for _ in states]
        for entry, state in zip(features, states):
            grid = as_grid(state.float())
            entry["mean"].append(grid.mean(dim=(2, 3)).numpy())
            entry["grid"].append(F.adaptive_avg_pool2d(grid, final_side).flatten(1).numpy())
    return [{name: np.concatenate(parts) for name, parts in entry.items()} for entry in features]


def probe(model_dir: Path, data: Path, train_images: int, test_images: int) -> dict[str, Any]:
    """Test accuracy per hidden state, pooling and label; the majority class's beside."""
    model = WingsForConditionalGeneration.from_pretrained(model_dir)
    processor = WingsProcessor.from_pretrained(model_dir)
    if model.vision_tower is None:
        raise ValueError(f"{model_dir} has no vision tower")
    labels = image_labels(data)
    train = [name for name in labels if "/train/" in name][:train_images]
    test = [name for name in labels if "/test/" in name][:test_images]
    if not train or not test:
        raise ValueError(f"{data} has no training or no test image whose colour and shape are both named")
    fitted, scored = (tower_features(model, processor, [data / name for name in names]) for names in (train, test))
    result: dict[str, Any] = {"model": str(model_dir), "train_images": len(train), "test_images": len(test)}
    for label in ("colour", "shape"):
        truth_train = np.array([labels[name][label] for name in train])
        truth = np.array([labels[name][label] for name in test])
        majority = Counter(truth_train.tolist()).most_common(1)[0][0]
        result[label] = {"majority": round(100 * float((truth == majority).mean()), 1), "by_state": []}
        for fit, score in zip(fitted, scored):
            row = {"channels": fit["mean"].shape[1]}
            for pooling in ("mean", "grid"):
                classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
                classifier.fit(fit[pooling], truth_train)
                row[pooling] = round(100 * float((classifier.predict(score[pooling]) == truth).mean()), 1)
            result[label]["by_state"].append(row)
    return result


def table(result: dict[str, Any]) -> str:
    """The probe's scores as a markdown table, one row per hidden state."""
    lines = ["| hidden state | channels | colour, mean | colour, grid | shape, mean | shape, grid |", "|---" * 6 + "|"]
    colour, shape = result["colour"]["by_state"], result["shape"]["by_state"]
    for index, (c, s) in enumerate(zip(colour, shape)):
        name = "head (-1)" if index == len(colour) - 1 else str(index)
        lines.append(f"| {name} | {c['channels']} | {c['mean']} | {c['grid']} | {s['mean']} | {s['grid']} |")
    lines.append(f"| majority class | | {result['colour']['majority']} | | {result['shape']['majority']} | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a WINGS model folder (its tower is probed)")
    parser.add_argument("--data", type=Path, required=True, help="`wings data easy-vqa --max-turns 1` output")
    parser.add_argument("--train-images", type=int, default=1000, help="training images to fit on")
    parser.add_argument("--test-images", type=int, default=500, help="test images to score")
    args = parser.parse_args(argv)
    if not (args.model / "config.json").is_file():
        parser.error(f"--model {args.model} holds no model (config.json)")
    if not (args.data / "train.json").is_file() or not (args.data / "test_questions.jsonl").is_file():
        parser.error(f"--data {args.data}: write it with `wings data easy-vqa --out {args.data} --max-turns 1`")
    if args.train_images < 2 or args.test_images < 1:
        parser.error("--train-images must be at least 2 and --test-images at least 1")
    result = probe(args.model, args.data, args.train_images, args.test_images)
    print(table(result))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
