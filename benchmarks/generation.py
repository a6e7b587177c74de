"""Generation: prefill time and decode tokens per second, WINGS against the base LLM (text-only prompts) and the
LLaVA-style baseline (image prompts); and decoding with the KV cache against full recomputation.

Times come from `model.generate` itself (greedy, a fixed number of new tokens): a logits processor records the
clock at every generated token, so prefill = time to the first token's logits and decode rate = the tokens after
the first over the time they took.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from .common import (
    SIZES,
    Table,
    build_llm,
    build_model,
    compare,
    device,
    fmt,
    make_batch,
    synchronize,
    target_cell,
)


class StepClock(LogitsProcessor):
    """Records the time at which each new token's scores are ready."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        synchronize()
        self.times.append(time.perf_counter())
        return scores


def timed_generate(model, inputs: dict, new_tokens: int, use_cache: bool = True) -> tuple[float, float, float]:
    """(prefill seconds, decode tokens/s, total seconds) of one greedy generation of exactly `new_tokens`."""
    clock = StepClock()
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=use_cache,
            logits_processor=LogitsProcessorList([clock]),
            pad_token_id=0,
        )
    synchronize()
    total = time.perf_counter() - start
    decode = (new_tokens - 1) / (clock.times[-1] - clock.times[0]) if new_tokens > 1 else float("nan")
    return clock.times[0] - start, decode, total


def prompt(model, length: int, image: bool) -> dict:
    batch = make_batch(model, length, image=image)
    batch.pop("labels")
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    return batch


def comparison_table(size: str, length: int, new_tokens: int, repeats: int) -> Table:
    base = build_llm(size).to(device()).eval()
    wings = build_model(size, "wings").eval()
    llava = build_model(size, "none").eval()
    text_prompt = prompt(wings, length, image=False)
    image_prompt = prompt(wings, length, image=True)
    runs = {
        "base, text": (base, text_prompt),
        "WINGS, text": (wings, text_prompt),
        "LLaVA, image": (llava, image_prompt),
        "WINGS, image": (wings, image_prompt),
    }
    records: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs}
    variants = {
        name: (lambda n=name, m=model, p=inputs: records[n].append(timed_generate(m, p, new_tokens)))
        for name, (model, inputs) in runs.items()
    }
    compare(variants, repeats)
    warm = {name: rec[1:] for name, rec in records.items()}  # the first record is the warmup
    prefill = {name: statistics.median(r[0] for r in rec) for name, rec in warm.items()}
    decode = {name: statistics.median(r[1] for r in rec) for name, rec in warm.items()}
    table = Table(
        f"Generation: prefill and decode speed ({length}-token prompt, {new_tokens} new tokens, KV cache, batch 1)",
        [
            "prompt",
            "model",
            "prefill ms",
            "decode tok/s",
            "reference",
            "prefill ratio",
            "decode ratio",
            "target (text decode ratio >= 0.9)",
        ],
    )
    for prompt_kind, ours, reference in (
        ("text only", "WINGS, text", "base, text"),
        ("one image", "WINGS, image", "LLaVA, image"),
    ):
        for name in (reference, ours):
            is_ours = name == ours
            ratio = decode[ours] / decode[reference]
            table.rows.append(
                [
                    prompt_kind,
                    name.split(",")[0] + (" LLM" if name.startswith("base") else ""),
                    fmt(prefill[name] * 1000, 0),
                    fmt(decode[name], 1),
                    "" if not is_ours else reference.split(",")[0],
                    fmt(prefill[ours] / prefill[reference]) if is_ours else "",
                    fmt(ratio) if is_ours else "",
                    (target_cell(ratio >= 0.9) if prompt_kind == "text only" else "-") if is_ours else "",
                ]
            )
    table.notes.append(
        f"Model: {SIZES[size]} (the base LLM is the same LLM without WINGS). Greedy `generate`; the image "
        f"prompt has {wings.config.image_seq_length} image tokens inside its {length}. Medians of {repeats} "
        "interleaved runs after a warmup; prefill ratio = WINGS / reference time, decode ratio = WINGS / reference "
        "tokens per second."
    )
    return table


def cache_table(size: str, length: int, new_tokens: int, repeats: int = 2) -> Table:
    model = build_model(size, "wings").eval()
    inputs = prompt(model, length, image=True)
    for use_cache in (True, False):  # warmup
        timed_generate(model, inputs, 4, use_cache)
    runs: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    for _ in range(repeats):  # alternated; the fastest run of each (the one least slowed by other processes)
        for use_cache in (True, False):
            runs[use_cache].append(timed_generate(model, inputs, new_tokens, use_cache=use_cache))
    cached, recomputed = (min(runs[use_cache], key=lambda run: run[2]) for use_cache in (True, False))
    speedup = recomputed[2] / cached[2]
    table = Table(
        f"Decoding with the KV cache against full recomputation ({new_tokens} new tokens, WINGS, image prompt)",
        ["variant", "total s", "decode tok/s", "speed-up", "target (>= 5x)"],
    )
    table.rows.append(
        [
            "KV cache (learners' keys/values cached too)",
            fmt(cached[2]),
            fmt(cached[1], 1),
            fmt(speedup, 1) + "x",
            target_cell(speedup >= 5),
        ]
    )
    table.rows.append(["recomputation (use_cache=False)", fmt(recomputed[2]), fmt(recomputed[1], 1), "", ""])
    table.notes.append(
        f"Model: {SIZES[size]}; {length}-token prompt with one image of {model.config.image_seq_length} tokens; "
        f"the faster of {repeats} alternated runs of each after a short warmup (recomputation is quadratic in the "
        "length, so it is slow); speed-up = ratio of total generation times."
    )
    return table


def run(quick: bool = False, size: str | None = None) -> list[Table]:
    if quick:
        return [comparison_table(size or "tiny", 48, 8, 2), cache_table(size or "tiny", 48, 32, repeats=1)]
    return [comparison_table(size or "demo", 128, 32, 3), cache_table(size or "small", 96, 256)]
