"""Training step time and peak memory: WINGS against the LLaVA-style baseline, and our router against the authors'.

The authors' router reads whole rows of the attention matrix, so their model runs eager attention with every
layer's L x L matrix materialised and kept for the backward. Emulated here on the same model, the same weights
and the same WINGS code, by one attention function (`authors_router_attention`) that runs the Llama eager kernel
(fp32 softmax, the weights matrix kept by autograd) and computes the router input from that materialised matrix:
the visual mass as a sum over each full row (so both variants feed the router the same numbers) plus the
authors' position-wise linear over the row (a trainable vector as wide as the row, zero-initialised), through
which the router's gradient flows back into the matrix. Kinder to them than their code: the row linear is cut
to the sequence length instead of padded to 4,096. Ours: SDPA with the extra value channel (attention.py).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from wings.model.attention import eager_attention

from .common import SIZES, Table, build_model, compare, fmt, make_batch, ratio, target_cell, train_step, training_setup

AUTHORS_BACKEND = "wings_authors_eager"  # the "wings_" prefix keeps the model from wrapping it again
MAX_ROW = 4096  # the authors' router: a linear layer over the attention row by absolute key position


def authors_router_attention(
    module: nn.Module, query, key, value, attention_mask, scaling=None, dropout=0.0, wings_context=None, **_
):
    """Eager attention whose materialised weights also give the router its input (see the module docstring)."""
    output, weights = eager_attention(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout)
    context = wings_context
    if context is not None and context.wants_visual_mass(module.layer_idx):
        length = weights.shape[-1]
        visual = context.key_is_visual[:, None, :, None].to(weights.dtype)  # (B, 1, T, 1)
        row_linear = module.authors_router_row[:length, None]  # (T, 1)
        router_input = torch.matmul(weights, visual) + torch.matmul(weights, row_linear)  # (B, H, L, 1)
        context.visual_mass[module.layer_idx] = router_input[..., 0].transpose(1, 2).float()  # (B, L, H)
    return output, weights


def use_authors_router(model) -> None:
    """Switch a WINGS model's LLM to the emulated authors' router (eager, full matrices)."""
    AttentionInterface.register(AUTHORS_BACKEND, authors_router_attention)
    AttentionMaskInterface.register(AUTHORS_BACKEND, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    model.language_model.config._attn_implementation_internal = AUTHORS_BACKEND
    for index in model.config.learner_layers:
        attention = model.language_model.model.layers[index].self_attn
        row = nn.Parameter(torch.zeros(MAX_ROW, device=attention.q_proj.weight.device))
        attention.register_parameter("authors_router_row", row)


def stage_table(size: str, length: int, repeats: int) -> Table:
    """WINGS align / instruct against LLaVA align / instruct: same LLM, tower, batch and labels."""
    table = Table(
        f"Training step: WINGS against the LLaVA-style baseline ({length} tokens, batch 1, one image)",
        [
            "stage",
            "WINGS s/step",
            "LLaVA s/step",
            "time ratio",
            "WINGS peak MiB",
            "LLaVA peak MiB",
            "memory ratio",
            "target (time ratio <= 1.3)",
        ],
    )
    for wings_stage, llava_stage, wings_mode in (
        ("align", "llava-align", "visual"),
        ("instruct", "llava-instruct", "wings"),
    ):
        variants = {}
        for name, stage, mode in (("wings", wings_stage, wings_mode), ("llava", llava_stage, "none")):
            model = build_model(size, mode)
            optimizer = training_setup(model, stage)
            batch = make_batch(model, length)
            variants[name] = lambda m=model, o=optimizer, b=batch: train_step(m, o, b)
        result = compare(variants, repeats, memory=True)
        w, llava = result["wings"], result["llava"]
        time_ratio = w.median / llava.median
        target = target_cell(time_ratio <= 1.3) if wings_stage == "instruct" else "-"
        table.rows.append(
            [
                f"{wings_stage} vs {llava_stage}",
                fmt(w.median),
                fmt(llava.median),
                fmt(time_ratio),
                fmt(w.peak_mib, 0),
                fmt(llava.peak_mib, 0),
                ratio(w.peak_mib, llava.peak_mib),
                target,
            ]
        )
        del variants, result
    table.notes += [
        f"Model: {SIZES[size]}. A step is forward + backward + AdamW update with the stage's trainable groups and "
        "learning rates (`prepare_model_for_stage`); the vision tower is frozen in all four. Labels on the last "
        f"25% of tokens. Median of {repeats} interleaved steps after one warmup.",
        "Peak MiB: resident memory during one step above the model + optimizer state at rest (so: activations, "
        "gradients, temporaries).",
    ]
    return table


def router_table(size: str, lengths: list[int], repeats: int) -> Table:
    """WINGS instruct step with our router (SDPA + value channel) against the authors' (eager + full matrices)."""
    table = Table(
        "Router input: ours (SDPA + visual value channel) against the authors' (eager, full attention matrices)",
        [
            "tokens",
            "ours s/step",
            "authors' s/step",
            "time ratio",
            "ours peak MiB",
            "authors' peak MiB",
            "memory ratio",
            "target (memory ratio <= 0.5 at 2,048)",
        ],
    )
    models = {}
    for name in ("ours", "authors"):
        model = build_model(size, "wings")
        if name == "authors":
            use_authors_router(model)
        models[name] = (model, training_setup(model, "instruct"))
    for length in lengths:
        variants = {}
        for name, (model, optimizer) in models.items():
            batch = make_batch(model, length)
            variants[name] = lambda m=model, o=optimizer, b=batch: train_step(m, o, b)
        result = compare(variants, repeats, memory=True)
        ours, theirs = result["ours"], result["authors"]
        memory_ratio = ours.peak_mib / theirs.peak_mib if theirs.peak_mib else float("nan")
        target = target_cell(memory_ratio <= 0.5) if length >= 2048 else "-"
        table.rows.append(
            [
                f"{length:,}",
                fmt(ours.median),
                fmt(theirs.median),
                fmt(ours.median / theirs.median),
                fmt(ours.peak_mib, 0),
                fmt(theirs.peak_mib, 0),
                ratio(ours.peak_mib, theirs.peak_mib),
                target,
            ]
        )
    table.notes += [
        f"Model: {SIZES[size]}; WINGS instruct step (forward + backward + AdamW), batch 1, one image of "
        f"{models['ours'][0].config.image_seq_length} tokens. Median of {repeats} interleaved steps after a warmup.",
        "Authors' router emulated: the same model with the Llama eager kernel (each layer's H x L x L fp32 "
        "attention weights materialised and kept for the backward) and the router input read from those full rows, "
        "plus a row-wide trainable linear like theirs (see benchmarks/training_step.py). Ratios are ours / theirs.",
    ]
    return table


def run(quick: bool = False, size: str | None = None) -> list[Table]:
    if quick:
        return [stage_table(size or "tiny", 128, 2), router_table(size or "tiny", [128, 512], 2)]
    return [stage_table(size or "demo", 512, 3), router_table(size or "small", [512, 2048], 3)]
