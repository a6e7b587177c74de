"""Achieved FLOP/s of a training step against the machine's measured matrix-multiply rate.

FLOPs of a step are counted by `torch.utils.flop_counter.FlopCounterMode` (matrix multiplies and attention,
forward and backward; elementwise work is not counted; torch 2.13 has no formula for the CPU flash-attention
ops, so we register the standard SDPA ones for them). The matmul rate is a square fp32 matmul on the same
threads, timed in alternation with the steps so that load from other processes hits both alike.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from .common import SIZES, Table, build_model, compare, device, fmt, make_batch, train_step, training_setup


def cpu_attention_formulas() -> dict:
    """FLOP formulas for the CPU flash-attention ops, which torch's counter does not count (full L x T, as on GPU)."""
    ops = torch.ops.aten
    if not hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu"):
        return {}

    def forward(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    def backward(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

    return {
        ops._scaled_dot_product_flash_attention_for_cpu: forward,
        ops._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }


def matmul_rate_variant(n: int):
    a = torch.randn(n, n, device=device())
    b = torch.randn(n, n, device=device())
    return lambda: torch.matmul(a, b)


def run(quick: bool = False, size: str | None = None) -> list[Table]:
    size = size or ("tiny" if quick else "demo")
    length, repeats, n = (128, 2, 512) if quick else (512, 3, 2048)
    table = Table(
        f"Achieved FLOP/s of a training step ({length} tokens, batch 1) against the measured matmul rate",
        ["step", "GFLOP/step", "s/step", "achieved GFLOP/s", f"fp32 matmul {n}x{n} GFLOP/s", "share of matmul rate"],
    )
    for label, mode, stage in (("WINGS instruct", "wings", "instruct"), ("LLaVA instruct", "none", "llava-instruct")):
        model = build_model(size, mode)
        optimizer = training_setup(model, stage)
        batch = make_batch(model, length)
        with FlopCounterMode(display=False, custom_mapping=cpu_attention_formulas()) as counter:
            train_step(model, optimizer, batch)  # also the warmup
        flops = counter.get_total_flops()
        variants = {
            "step": lambda m=model, o=optimizer, b=batch: train_step(m, o, b),
            "matmul": matmul_rate_variant(n),
        }
        result = compare(variants, repeats, warmup=0)
        achieved = flops / result["step"].median / 1e9
        peak = 2 * n**3 / result["matmul"].median / 1e9
        table.rows.append(
            [
                label,
                fmt(flops / 1e9, 1),
                fmt(result["step"].median),
                fmt(achieved, 1),
                fmt(peak, 1),
                f"{achieved / peak:.0%}",
            ]
        )
        del model, optimizer, variants
    table.notes.append(
        f"Model: {SIZES[size]}. Median of {repeats} steps and matmuls, alternated. FLOPs by FlopCounterMode "
        "(matmuls and attention, attention as full L x L; elementwise work, optimizer and masks not counted), so "
        "the share is a lower bound on how busy the arithmetic units are."
    )
    return [table]
