"""The LM head at labelled positions only (what `WingsForConditionalGeneration` does) against the full head.

The full-head variant is the usual causal-LM loss: logits for every position, shifted, cross-entropy with
ignored positions; on SmolLM2 the head is a 49,152 x 576 matrix, so logits are the largest activation.
"""

from __future__ import annotations

import torch.nn.functional as F

from wings.data.formats import IGNORE_INDEX

from .common import SIZES, Table, build_model, compare, fmt, make_batch, ratio, train_step, training_setup


def full_head_loss(model, batch):
    """Logits at every position, then the shifted cross-entropy over the labelled ones."""
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(**inputs, use_cache=False).logits.float()
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)


def run(quick: bool = False, size: str | None = None) -> list[Table]:
    size = size or ("tiny" if quick else "demo")
    length, repeats = (128, 2) if quick else (512, 3)
    model = build_model(size, "wings")
    optimizer = training_setup(model, "instruct")
    table = Table(
        f"LM head at labelled positions against the full head (WINGS instruct step, {length} tokens)",
        [
            "labelled share",
            "labelled-only s/step",
            "full head s/step",
            "time ratio",
            "labelled-only peak MiB",
            "full head peak MiB",
            "memory ratio",
        ],
    )
    for share in (0.25, 0.5):
        batch = make_batch(model, length, labelled=share)
        variants = {
            "labelled": lambda b=batch: train_step(model, optimizer, b),
            "full": lambda b=batch: train_step(model, optimizer, b, loss_fn=full_head_loss),
        }
        result = compare(variants, repeats, memory=True)
        ours, full = result["labelled"], result["full"]
        table.rows.append(
            [
                f"{share:.0%}",
                fmt(ours.median),
                fmt(full.median),
                fmt(ours.median / full.median),
                fmt(ours.peak_mib, 0),
                fmt(full.peak_mib, 0),
                ratio(ours.peak_mib, full.peak_mib),
            ]
        )
    table.notes.append(
        f"Model: {SIZES[size]}; batch 1, one image; labels on the last share of the tokens (answers), as in "
        f"instruction data. Median of {repeats} interleaved steps after a warmup; ratios are labelled-only / full."
    )
    return [table]
