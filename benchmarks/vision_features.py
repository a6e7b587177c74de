"""What the frozen tower's feature cache saves: a stage-1 (align) training step with the tower run every step
against the same step whose images' features come from the cache (`VisionFeatureCache`, filled by the untimed
warmup). The demo's setting: SmolLM2-135M-Instruct (the "small" size keeps its first 6 layers) and the pretrained
EfficientNet-Lite0 tower at 112 px (16 tokens per image), batch 8 x 64 tokens, one image per sample.

    python -m benchmarks --only vision_features [--size small|demo]
"""

from __future__ import annotations

import torch

from wings.model.modeling_wings import WingsForConditionalGeneration
from wings.model.vision_towers import load_vision_tower

from .common import Table, build_llm, compare, fmt, make_batch, ratio, train_step, training_setup

TOWER = "efficientnet-lite0-in1k"


def run(quick: bool = False, size: str | None = None) -> list[Table]:
    size = size or ("tiny" if quick else "small")
    tower = load_vision_tower(TOWER)
    model = WingsForConditionalGeneration.from_llm_and_vision(build_llm(size), tower, learners="visual", lorra_rank=8)
    optimizer = training_setup(model, "align")  # the tower is frozen: only projector and visual learners train
    batch_size, length = (2, 48) if quick else (8, 64)
    batch = make_batch(model, length, batch=batch_size)
    cache = model.enable_vision_feature_cache()

    def uncached() -> None:
        model.vision_feature_cache = None
        train_step(model, optimizer, batch)

    def cached() -> None:
        model.vision_feature_cache = cache
        train_step(model, optimizer, batch)

    def tower_alone() -> None:
        with torch.no_grad():
            model.tower_features(batch["pixel_values"])

    results = compare(
        {"tower every step": uncached, "features cached": cached, "tower alone": tower_alone}, repeats=3 if quick else 8
    )
    every, reused, alone = (results[name].median for name in ("tower every step", "features cached", "tower alone"))
    table = Table(
        f"Align step with the frozen tower's features cached ({size} LLM + {TOWER}, batch {batch_size} x {length})",
        ["variant", "seconds per step", "relative to the tower every step"],
    )
    table.rows = [
        ["tower every step", fmt(every, 3), "1.00"],
        ["features cached", fmt(reused, 3), ratio(reused, every)],
        [f"the tower alone on {batch_size} images", fmt(alone, 3), ratio(alone, every)],
    ]
    table.notes = [
        f"cache after the run: {len(cache)} images, {cache.hits} hits, {cache.misses} misses, "
        f"{cache.bytes / 2**20:.1f} MiB",
        "the cache's key hashes each image's pixels (blake2b) and reads the tower's weight versions: its own cost is "
        "in the cached step's time",
    ]
    return [table]
