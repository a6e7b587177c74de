"""One-shot GPU check: everything a GPU run should tell us, in one command and one JSON file.

    python -m benchmarks.gpu [--out runs/gpu-check.json] [--layers N] [--tiny]      (or: make gpu-check)

On a CUDA machine with nothing downloaded (random weights, tower trained from scratch), in minutes:
1. backends: sdpa and flash_attention_2 (when `flash_attn` is installed) against eager on a small WINGS model in bf16
   (logits, router weights), and cached greedy generation against recomputation (WINGS and the model without
   learners, whose own bf16 disagreement is the yardstick, WINGS.md property 3);
2. training: a bf16 WINGS instruct step against the LLaVA-style baseline at Qwen2.5-7B layer shapes (random
   weights, `--layers` layers), activation checkpointing off and on: tokens/s, peak memory, achieved TFLOP/s
   against this GPU's measured bf16 matmul rate;
3. generation: prefill and decode speed of WINGS against the base LLM at the same shapes, and the learner cache's
   bytes (compact and full form) against the LLM's KV cache.
Each section is written to the JSON file as soon as it is done (a section that fails records its error and the
others still run). Without CUDA the same code runs in a tiny CPU mode (a test runs it): its numbers say nothing
about a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

QWEN25_7B_LAYER = dict(
    hidden_size=3584,
    intermediate_size=18944,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    rope_theta=1e6,
)
TINY_LAYER = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=512)
TARGETS = {"instruct step time / LLaVA": 1.15, "decode tokens/s / base LLM": 0.95, "share of bf16 matmul rate": 0.5}


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of `repeats` calls after one warmup call."""
    fn()
    synchronize()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        seconds.append(time.perf_counter() - start)
    return sorted(seconds)[len(seconds) // 2]


def build(layer: dict, layers: int, learners: str, rank: int, device: torch.device, attn: str = "sdpa"):
    """WINGS (or the LLaVA-style baseline, learners="none") in bf16 around a random Qwen2 LLM, made on `device`."""
    from wings.model.modeling_wings import WingsForConditionalGeneration
    from wings.model.vision_towers import load_vision_tower

    torch.manual_seed(0)
    config = Qwen2Config(num_hidden_layers=layers, max_position_embeddings=32768, **layer)
    tower = load_vision_tower("siglip-scratch-64", dtype=torch.bfloat16).to(device)
    with torch.device(device):
        llm = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, attn_implementation=attn)
        model = WingsForConditionalGeneration.from_llm_and_vision(llm, tower, learners=learners, lorra_rank=rank)
    return model.to(device)


def randomize_learners(model, scale: float = 0.05) -> None:
    """Learners whose B and router are not zero, so that they change the outputs being compared."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.wings_layers.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator).to(parameter) * scale)


def image_prompt(model, length: int, batch: int = 1) -> dict[str, torch.Tensor]:
    """Random ids with one image after 16 text tokens, and its pixels."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.text_config.vocab_size - 1, (batch, length), generator=generator)
    n = model.config.image_seq_length
    ids[:, 16 : 16 + n] = model.config.image_token_id
    size = model.config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=generator, dtype=torch.float32).to(torch.bfloat16)
    return {"input_ids": ids.to(model.device), "pixel_values": pixels.to(model.device)}


# ----- 1. backends ---------------------------------------------------------------------------------------------
def backends(tiny: bool, device: torch.device) -> dict[str, Any]:
    layer = (
        TINY_LAYER
        if tiny
        else dict(
            hidden_size=1024, intermediate_size=2048, num_attention_heads=8, num_key_value_heads=2, vocab_size=4096
        )
    )
    model = build(layer, 2 if tiny else 4, "wings", 16, device, attn="eager").eval()
    randomize_learners(model)
    inputs = image_prompt(model, 96 if tiny else 512)
    names = ["eager", "sdpa"]
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        names.append("flash_attention_2")
    results: dict[str, Any] = {"backends": names}
    outputs = {}
    for name in names:
        model.set_attn_implementation(name)
        captured = []
        hooks = [
            layer.router.register_forward_hook(lambda m, a, out: captured.append(torch.cat(out, -1)))
            for layer in model.wings_layers.values()
        ]
        with torch.no_grad():
            logits = model(**inputs, use_cache=False).logits.float()
        for hook in hooks:
            hook.remove()
        outputs[name] = (logits, torch.stack(captured))
    for name in names[1:]:
        results[f"{name} vs eager"] = {
            "max |logit difference|": (outputs[name][0] - outputs["eager"][0]).abs().max().item(),
            "max |router weight difference|": (outputs[name][1] - outputs["eager"][1]).abs().max().item(),
            "logit scale (max |logit|)": outputs["eager"][0].abs().max().item(),
        }
    model.set_attn_implementation("sdpa")
    results["cached vs recomputed generation"] = {
        "WINGS": cached_agreement(model, inputs),
        "without learners (yardstick)": cached_agreement(
            build(layer, 2 if tiny else 4, "none", 16, device).eval(), inputs
        ),
    }
    return results


def cached_agreement(model, inputs: dict, new_tokens: int = 16) -> dict[str, float]:
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = model.generate(**inputs, use_cache=True, **options)[:, -new_tokens:]
        recomputed = model.generate(**inputs, use_cache=False, **options)[:, -new_tokens:]
    same = (cached == recomputed).long().cumprod(-1).sum().item()
    return {"tokens equal before the first difference": same, "of": new_tokens}


# ----- 2. training ---------------------------------------------------------------------------------------------
def matmul_rate(tiny: bool, device: torch.device) -> float:
    """TFLOP/s of a square bf16 matmul (fp32 on a CPU, where bf16 is emulated)."""
    n, dtype = (512, torch.float32) if tiny else (8192, torch.bfloat16)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, 5 if tiny else 20) / 1e12


def training(tiny: bool, device: torch.device, layers: int, length: int, rank: int, peak_tflops: float) -> list[dict]:
    from torch.utils.flop_counter import FlopCounterMode

    from wings.training.stages import STAGES, prepare_model_for_stage

    rows, model_flops = [], {}
    for label, learners, stage in (
        ("WINGS instruct", "wings", "instruct"),
        ("LLaVA instruct", "none", "llava-instruct"),
    ):
        for checkpointing in (False, True):
            model = build(TINY_LAYER if tiny else QWEN25_7B_LAYER, layers, learners, rank, device)
            model.train()
            rates = prepare_model_for_stage(model, STAGES[stage])
            groups = model.parameter_groups()
            optimizer = torch.optim.AdamW(
                [{"params": [p for _, p in groups[group]], "lr": rate} for group, rate in rates.items()]
            )
            if checkpointing:
                model.activation_checkpointing_enable()
            batch = image_prompt(model, length)
            labels = batch["input_ids"].masked_fill(batch["input_ids"] == model.config.image_token_id, -100)
            labels[:, : length * 3 // 4] = -100  # the answer: the last quarter
            batch["labels"] = labels

            def step(model=model, batch=batch, optimizer=optimizer) -> None:
                model(**batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            with FlopCounterMode(display=False) as counter:
                step()  # also the warmup
            # Model FLOPs: checkpointing's recomputation is extra work, not extra throughput.
            flops = model_flops.setdefault(label, counter.get_total_flops())
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            seconds = timed(step, 2 if tiny else 5)
            peak = (torch.cuda.max_memory_allocated() - before) / 2**30 if device.type == "cuda" else None
            achieved = flops / seconds / 1e12
            rows.append(
                {
                    "model": label,
                    "checkpointing": checkpointing,
                    "layers": layers,
                    "tokens": length,
                    "seconds per step": seconds,
                    "tokens/s": length / seconds,
                    "peak GiB above weights and optimizer": peak,
                    "model TFLOP per step": flops / 1e12,
                    "achieved TFLOP/s": achieved,
                    "share of matmul rate": achieved / peak_tflops,
                }
            )
            del model, optimizer, batch
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# ----- 3. generation -------------------------------------------------------------------------------------------
def generation(tiny: bool, device: torch.device, layers: int, length: int, new_tokens: int, rank: int) -> dict:
    from wings.model.learner_cache import cache_bytes

    from .generation import timed_generate

    layer = TINY_LAYER if tiny else QWEN25_7B_LAYER
    model = build(layer, layers, "wings", rank, device).eval()
    base = model.language_model  # the same LLM; alone, it runs as the base LLM
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, layer["vocab_size"] - 1, (1, length), generator=generator).to(device)
    prompt = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    result: dict[str, Any] = {"layers": layers, "prompt tokens": length, "new tokens": new_tokens}
    runs = {"base LLM": lambda: timed_generate(base, prompt, new_tokens)}
    for form in ("full", "compact"):
        runs[f"WINGS, {form} learner cache"] = lambda f=form: (
            setattr(model, "learner_cache", f),
            timed_generate(model, prompt, new_tokens),
        )[1]
    for name, run in runs.items():
        run()  # warmup
        best = min((run() for _ in range(2)), key=lambda r: r[2])
        result[name] = {"prefill seconds": best[0], "decode tokens/s": best[1]}
    for form in ("full", "compact"):
        model.learner_cache = form
        with torch.no_grad():
            cache = model(**image_prompt(model, length), use_cache=True).cache
        llm_bytes, learner_bytes = cache_bytes(cache, model._cache_index("text"))
        result[f"cache bytes, {form} form"] = {
            "LLM": llm_bytes,
            "learners": learner_bytes,
            "learners / LLM": learner_bytes / llm_bytes,
        }
    result["learner_cache='auto' picks"] = "compact" if device.type == "cuda" else "full"
    return result


# ----- the report ----------------------------------------------------------------------------------------------
def targets(report: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rows = {(r["model"], r["checkpointing"]): r for r in report.get("training", [])}
    if rows:
        ratio = rows["WINGS instruct", False]["seconds per step"] / rows["LLaVA instruct", False]["seconds per step"]
        share = rows["WINGS instruct", False]["share of matmul rate"]
        out["instruct step time / LLaVA"] = {
            "value": ratio,
            "target": f"<= {TARGETS['instruct step time / LLaVA']}",
            "met": ratio <= TARGETS["instruct step time / LLaVA"],
        }
        out["share of bf16 matmul rate"] = {"value": share, "target": ">= 0.5", "met": share >= 0.5}
    generated = report.get("generation", {})
    if "base LLM" in generated:
        forms = [k for k in generated if k.startswith("WINGS, compact" if report["device"] != "cpu" else "WINGS, full")]
        ratio = generated[forms[0]]["decode tokens/s"] / generated["base LLM"]["decode tokens/s"]
        out["decode tokens/s / base LLM"] = {"value": ratio, "target": ">= 0.95", "met": ratio >= 0.95}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/gpu-check.json", help="the JSON file to write")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (implied without CUDA)")
    parser.add_argument("--layers", type=int, default=8, help="decoder layers at Qwen2.5-7B shapes (GPU)")
    parser.add_argument("--length", type=int, default=2048, help="tokens per training sample and prompt (GPU)")
    parser.add_argument("--rank", type=int, default=64, help="LoRRA rank r (the paper's 7B models: 64)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or device.type != "cuda"
    layers, length, new_tokens = (2, 96, 4) if tiny else (args.layers, args.length, 64)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "tiny": tiny,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "flash_attn": importlib.util.find_spec("flash_attn") is not None,
        "python": platform.python_version(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "errors": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sections = {
        "backends": lambda: backends(tiny, device),
        "bf16 matmul TFLOP/s": lambda: matmul_rate(tiny, device),
        "training": lambda: training(tiny, device, layers, length, args.rank, report["bf16 matmul TFLOP/s"]),
        "generation": lambda: generation(tiny, device, layers, length, new_tokens, args.rank),
    }
    began = time.perf_counter()
    for name, section in sections.items():
        start = time.perf_counter()
        try:
            report[name] = section()
        except Exception as error:  # one failing section must not lose the others' results
            report["errors"][name] = "".join(traceback.format_exception(error))[-4000:]
        report.setdefault("section seconds", {})[name] = time.perf_counter() - start
        report["targets"] = targets(report)
        report["total seconds"] = time.perf_counter() - began
        out.write_text(json.dumps(report, indent=2, default=str))
        print(f"{name}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print(f"wrote {out} ({'tiny CPU mode' if tiny else report['device']}); errors: {list(report['errors']) or 'none'}")
    return report


if __name__ == "__main__":
    main()
