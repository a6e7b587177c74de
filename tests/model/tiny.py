"""Tiny random models built from configs, for every model test (no network, milliseconds per forward)."""

from __future__ import annotations

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
    SiglipVisionConfig,
)

from wings import WingsConfig, WingsForConditionalGeneration
from wings.model.efficientnet_lite import EfficientNetLiteConfig

VOCAB = 96
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
)


def text_config(family: str = "qwen2"):
    if family == "qwen2":
        return Qwen2Config(**COMMON)
    if family == "llama":
        return LlamaConfig(**COMMON, tie_word_embeddings=True)
    if family == "mistral":
        return MistralConfig(**COMMON, sliding_window=None)
    if family == "qwen3":  # head_dim 16 != hidden/heads: the learners get their own rotary table
        return Qwen3Config(**COMMON, head_dim=16)
    raise ValueError(family)


def vision_config(tower: str = "siglip"):
    common = dict(
        hidden_size=24, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=8
    )
    if tower == "siglip":
        return SiglipVisionConfig(**common)
    if tower == "clip":
        return CLIPVisionConfig(**common, projection_dim=16)
    if tower == "cnn":  # EfficientNet-Lite's structure, two small stages: stride 4, 16 px -> 4 x 4 tokens of 24
        return EfficientNetLiteConfig(
            image_size=16,
            patch_size=4,
            stem_channels=8,
            hidden_size=24,
            stages=[[1, 3, 1, 1, 8, 8], [2, 3, 2, 2, 8, 16]],
        )
    raise ValueError(tower)


def tiny_wings(family: str = "qwen2", tower: str = "siglip", seed: int = 0, attn: str = "sdpa", **options):
    torch.manual_seed(seed)
    config = WingsConfig(text_config=text_config(family), vision_config=vision_config(tower), **options)
    config._attn_implementation = attn
    return WingsForConditionalGeneration(config).eval()


def randomize_learners(model: WingsForConditionalGeneration, seed: int = 1, scale: float = 0.3) -> None:
    """Give the zero-initialised B matrices and routers real values, so the learners change the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.wings_layers.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


def image_ids(model, n: int = 1) -> list[int]:
    return [model.config.image_token_id] * (model.config.image_seq_length * n)


def sample(model, text_before=(5, 6, 7), images: int = 1, text_after=(8, 9, 10, 11), seed: int = 0):
    """One sequence: text, `images` images back to back with text between them, text; and pixel values."""
    ids = list(text_before)
    for index in range(images):
        ids += image_ids(model) + [20 + index, 21 + index]
    ids += list(text_after)
    generator = torch.Generator().manual_seed(seed)
    size = model.config.vision_config.image_size
    pixels = torch.randn(images, 3, size, size, generator=generator) if images else None
    return torch.tensor([ids]), pixels
