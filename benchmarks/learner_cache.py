"""The learners' KV cache: bytes held by the real cache objects against the LLM's own KV cache at Qwen2.5-7B
attention shapes, and decoding speed of the full and the compact cache form at a long prompt on this machine.

    python -m benchmarks --only learner_cache [--quick]

Bytes are what the cache layers' tensors hold after a prompt and a few decoding steps (the learners' layers keep
spare room to append in place: included). They depend on the attention shapes, the rank, the number of tokens and
the dtype only, so the model has the 7B attention shapes with few layers and a narrow MLP (random weights, bf16).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from wings.model.learner_cache import cache_bytes
from wings.model.modeling_wings import WingsForConditionalGeneration
from wings.model.vision_towers import load_vision_tower

from .common import SIZES, Table, build_llm, build_model, device, fmt, target_cell
from .generation import prompt, timed_generate

# Qwen2.5-7B-Instruct's attention: d = 3584, 28 query heads, 4 KV heads, head size 128 (28 layers in the real one).
QWEN25_7B = dict(hidden_size=3584, num_attention_heads=28, num_key_value_heads=4, rope_theta=1e6)


def seven_b_shapes(layers: int, rank: int, dtype: torch.dtype = torch.bfloat16) -> WingsForConditionalGeneration:
    """WINGS around a random LLM with Qwen2.5-7B attention shapes, `layers` layers and a narrow MLP (the cache does
    not depend on it), with the siglip-scratch-64 tower (64 visual tokens)."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=1024, intermediate_size=256, num_hidden_layers=layers, max_position_embeddings=32768, **QWEN25_7B
    )
    llm = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model = WingsForConditionalGeneration.from_llm_and_vision(
        llm, load_vision_tower("siglip-scratch-64"), lorra_rank=rank
    )
    return model.to(device()).eval()


def cache_sizes(model: WingsForConditionalGeneration, inputs: dict, steps: int) -> dict[str, tuple[int, int]]:
    """(LLM, learners) cache bytes after the prompt and `steps` single-token steps, held (spare room included) and
    used."""
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
        cache = out.cache
        for _ in range(steps):
            out = model(input_ids=out.logits[:, -1:].argmax(-1), cache=cache, use_cache=True)
    first = model._cache_index("text")
    return {"held": cache_bytes(cache, first), "used": cache_bytes(cache, first, spare_room=False)}


def bytes_table(length: int, layers: int = 28, steps: int = 4) -> Table:
    """Measured at 1 and 2 layers (what all layers share and what each layer adds), given for `layers` layers."""
    table = Table(
        f"Learner cache against the LLM's KV cache at Qwen2.5-7B attention shapes, {layers} layers ({length}-token "
        f"prompt with one image, +{steps} decoded tokens, bf16)",
        [
            "rank r",
            "learner cache",
            "LLM KV MiB",
            "learners MiB (used)",
            "learners MiB (held)",
            "learners / LLM (held)",
            "target (<= 0.5x)",
        ],
    )
    for rank in (16, 64):
        models = [seven_b_shapes(count, rank) for count in (1, 2)]
        inputs = prompt(models[0], length, image=True)
        for form in ("full", "compact"):
            measured = []
            for model in models:
                model.learner_cache = form
                measured.append(cache_sizes(model, inputs, steps))
            # bytes(n layers) = shared + n x per layer, for the LLM's and the learners' caches alike
            one, two = measured
            scaled = {
                kind: [one[kind][part] + (layers - 1) * (two[kind][part] - one[kind][part]) for part in (0, 1)]
                for kind in ("held", "used")
            }
            share = scaled["held"][1] / scaled["held"][0]
            table.rows.append(
                [
                    str(rank),
                    form,
                    fmt(scaled["held"][0] / 2**20, 1),
                    fmt(scaled["used"][1] / 2**20, 1),
                    fmt(scaled["held"][1] / 2**20, 1),
                    fmt(share) + "x",
                    target_cell(share <= 0.5) if form == "compact" else "-",
                ]
            )
        del models
    d, heads, kv_heads = QWEN25_7B["hidden_size"], QWEN25_7B["num_attention_heads"], QWEN25_7B["num_key_value_heads"]
    head_dim = d // heads
    table.notes.append(
        f"Model: a random Qwen2 LLM with d={d}, {heads} heads, {kv_heads} KV heads, head size {head_dim}, MLP "
        "narrowed (the cache does not depend on it), learners on every layer, + siglip-scratch-64 (64 visual "
        f"tokens). The real cache objects are measured with 1 and 2 layers; {layers} layers = what all layers share "
        f"+ {layers} x what one layer adds. Per token and layer the LLM keeps 2 x 4 x 128 = 1,024 numbers; the full "
        "learner cache 2 d = 7,168 per learner kind (the visual kind at visual tokens only); the compact one 2 r per "
        "layer, plus d + 2 x 128 (X and its rotary tables) once for all layers. Held = with the learners' spare room "
        "for appending in place (up to a quarter more, right after the cache grew)."
    )
    return table


def speed_table(size: str, length: int, new_tokens: int, repeats: int) -> Table:
    base = build_llm(size).to(device()).eval()
    model = build_model(size, "wings").eval()
    text_prompt = prompt(model, length, image=False)
    runs: dict[str, list[tuple[float, float, float]]] = {
        "base LLM": [],
        "WINGS, full cache": [],
        "WINGS, compact cache": [],
    }

    def run(name: str) -> None:
        if name == "base LLM":
            runs[name].append(timed_generate(base, text_prompt, new_tokens))
            return
        model.learner_cache = "full" if "full" in name else "compact"
        runs[name].append(timed_generate(model, text_prompt, new_tokens))

    for name in runs:  # warmup
        timed_generate(base if name == "base LLM" else model, text_prompt, 2)
    for _ in range(repeats):  # alternated; the faster run of each (the one least slowed by other processes)
        for name in runs:
            run(name)
    decode = {name: max(record[1] for record in records) for name, records in runs.items()}
    prefill = {name: min(record[0] for record in records) for name, records in runs.items()}
    table = Table(
        f"Decoding with the full and the compact learner cache ({length}-token text prompt, {new_tokens} new tokens, "
        "batch 1)",
        ["model", "prefill s", "decode tok/s", "decode / base LLM", "decode / full cache"],
    )
    for name in runs:
        table.rows.append(
            [
                name,
                fmt(prefill[name]),
                fmt(decode[name], 1),
                fmt(decode[name] / decode["base LLM"]),
                fmt(decode[name] / decode["WINGS, full cache"]) if name != "base LLM" else "-",
            ]
        )
    table.notes.append(
        f"Model: {SIZES[size]}; device {device()}. The faster of {repeats} alternated runs of each (the machine is "
        "shared). The compact form expands every layer's learner keys and values at each step (about 2 T r d "
        "multiply-adds per layer and kind): `learner_cache='auto'` takes it on CUDA only."
    )
    return table


def run(quick: bool = False, size: str | None = None) -> list[Table]:
    if quick:
        return [bytes_table(96, steps=2), speed_table(size or "tiny", 96, 4, 1)]
    return [bytes_table(512), speed_table(size or "demo", 2048, 16, 2)]
