"""Quickstart: give SmolLM2-135M-Instruct (a real pretrained chat LLM, offline from PyPI) WINGS, and check
what the method promises before any training.

    .venv/bin/python examples/quickstart.py [--threads N]     # or: make quickstart

1. Build WINGS around the LLM with a small SigLIP tower trained from scratch later (`wings build` does the same).
2. Text-only chat: the WINGS model answers exactly as the base LLM (learners start at zero).
3. An image anywhere in the conversation: KV-cached generation equals full recomputation, token for token.
4. Save and reload through transformers' Auto classes: identical outputs.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from transformers import AutoModelForImageTextToText  # noqa: E402

import wings  # noqa: E402,F401  (registers the Auto classes)
from wings.model.builder import build_wings  # noqa: E402
from wings.model.processing_wings import WingsProcessor  # noqa: E402
from wings.threads import add_threads_argument, set_threads  # noqa: E402


def shapes_image() -> Image.Image:
    image = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((8, 8, 40, 40), fill="red")
    draw.rectangle((36, 30, 60, 60), fill="blue")
    return image


def generate(model, processor, conversation, images=(), **options) -> tuple[str, torch.Tensor]:
    batch = processor(conversations=conversation, images=list(images))
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values") if key in batch}
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False, **options)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return processor.decode(new_tokens, skip_special_tokens=True), new_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_threads_argument(parser)
    set_threads(parser.parse_args().threads, announce=True)  # the same choice as every `wings` command
    torch.manual_seed(0)
    start = time.perf_counter()
    model, processor = build_wings("smollm2-135m-instruct", "siglip-scratch-64")
    model.eval()
    groups = {name: sum(p.numel() for _, p in params) for name, params in model.parameter_groups().items()}
    print(
        f"1. built WINGS on SmolLM2-135M-Instruct in {time.perf_counter() - start:.1f}s: "
        + ", ".join(f"{name} {count / 1e6:.2f}M" for name, count in groups.items())
    )

    question = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    wings_answer, wings_tokens = generate(model, processor, question)
    base_llm = copy.deepcopy(model.language_model)
    base_llm.config._attn_implementation_internal = "sdpa"
    batch = processor(conversations=question)
    with torch.no_grad():
        base_output = base_llm.generate(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=24, do_sample=False
        )
    base_tokens = base_output[0, batch["input_ids"].shape[1] :]
    same = torch.equal(wings_tokens, base_tokens)
    print(f"2. text-only chat, WINGS: {wings_answer!r}\n   base LLM identical: {same}")
    assert same, "a fresh WINGS model must answer text exactly as its base LLM"

    conversation = [{"role": "user", "content": "<image>\nDescribe the shapes in this picture."}]
    start = time.perf_counter()
    _, cached = generate(model, processor, conversation, [shapes_image()], use_cache=True)
    cached_time = time.perf_counter() - start
    start = time.perf_counter()
    _, recomputed = generate(model, processor, conversation, [shapes_image()], use_cache=False)
    recompute_time = time.perf_counter() - start
    print(
        f"3. with an image ({model.config.image_seq_length} visual tokens): cached generation == recomputation: "
        f"{torch.equal(cached, recomputed)} ({cached_time:.2f}s cached vs {recompute_time:.2f}s recomputed; "
        "the tower and projector are untrained, so the words mean nothing yet)"
    )
    assert torch.equal(cached, recomputed)

    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
        reloaded = AutoModelForImageTextToText.from_pretrained(directory).eval()
        reloaded_processor = WingsProcessor.from_pretrained(directory)
        _, again = generate(reloaded, reloaded_processor, conversation, [shapes_image()])
    print(f"4. saved and reloaded with AutoModelForImageTextToText: same answer: {torch.equal(again, cached)}")
    assert torch.equal(again, cached)
    print(
        "\nNext: train it (see docs/training.md), or `.venv/bin/wings build --llm smollm2-135m-instruct "
        "--vision siglip-scratch-64 --out runs/wings-init`."
    )


if __name__ == "__main__":
    main()
