"""Training memory with and without activation checkpointing: WINGS instruct against the LLaVA-style baseline.

    python -m benchmarks --only checkpointing [--quick]

Each layer's learner keys and values are made inside the layer (learner_cache.py), so checkpointing frees them with
the layer's other activations and makes them again in the backward pass.
"""

from __future__ import annotations

from .common import SIZES, Table, build_model, compare, fmt, make_batch, ratio, train_step, training_setup


def run(quick: bool = False, size: str | None = None) -> list[Table]:
    size = size or ("tiny" if quick else "small")
    length, repeats = (128, 1) if quick else (1024, 2)
    variants, labels = {}, {}
    for model_name, mode, stage in (
        ("WINGS instruct", "wings", "instruct"),
        ("LLaVA instruct", "none", "llava-instruct"),
    ):
        for checkpointing in (False, True):
            model = build_model(size, mode)
            optimizer = training_setup(model, stage)
            if checkpointing:
                model.activation_checkpointing_enable()
            batch = make_batch(model, length)
            key = f"{model_name}, checkpointing {'on' if checkpointing else 'off'}"
            variants[key] = lambda m=model, o=optimizer, b=batch: train_step(m, o, b)
            labels[key] = (model_name, checkpointing)
    result = compare(variants, repeats, memory=True)
    table = Table(
        f"Training step memory with and without activation checkpointing ({length} tokens, batch 1, one image)",
        ["model", "checkpointing", "s/step", "peak MiB", "peak / without checkpointing"],
    )
    for key, (model_name, checkpointing) in labels.items():
        without = result[f"{model_name}, checkpointing off"]
        table.rows.append(
            [
                model_name,
                "on" if checkpointing else "off",
                fmt(result[key].median),
                fmt(result[key].peak_mib, 0),
                ratio(result[key].peak_mib, without.peak_mib) if checkpointing else "-",
            ]
        )
    table.notes.append(
        f"Model: {SIZES[size]}. Peak MiB: resident memory during one step above the model and optimizer state at "
        f"rest (activations, gradients, temporaries; benchmarks/common.py). Median of {repeats} interleaved steps "
        "after a warmup. Checkpointing: transformers' activation checkpointing of every decoder layer (non-reentrant)."
    )
    return [table]
