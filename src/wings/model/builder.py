"""Build a WINGS model and its processor from names: an LLM (registry name, hub id, local path) and a vision
tower (hub id, local path, or a from-scratch preset for machines without a pretrained tower)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, PreTrainedModel, SiglipVisionConfig

from .modeling_wings import WingsForConditionalGeneration
from .processing_wings import WingsProcessor
from .registry import load_llm

# Vision towers trained from scratch (stage 1 trains them): no pretrained encoder is needed offline.
VISION_PRESETS: dict[str, dict[str, Any]] = {
    # 64x64 images, 8x8 patches: 64 visual tokens per image; ~1M parameters. The CPU demo's tower.
    "siglip-scratch-64": dict(
        image_size=64, patch_size=8, hidden_size=192, intermediate_size=768, num_hidden_layers=4,
        num_attention_heads=4,
    ),
    # 32x32 images, 8x8 patches: 16 visual tokens; for quick checks.
    "siglip-scratch-32": dict(
        image_size=32, patch_size=8, hidden_size=96, intermediate_size=384, num_hidden_layers=2,
        num_attention_heads=4,
    ),
}


def load_vision_tower(name_or_path: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> PreTrainedModel:
    """A vision tower: a preset built with random weights, or a SigLIP/CLIP model from a hub id or directory."""
    if name_or_path in VISION_PRESETS:
        torch.manual_seed(seed)
        tower = AutoModel.from_config(SiglipVisionConfig(**VISION_PRESETS[name_or_path]))
        tower.name_or_path = name_or_path
        return tower.to(dtype)
    if not Path(name_or_path).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        config_hint = ", ".join(VISION_PRESETS)
        raise FileNotFoundError(
            f"vision tower {name_or_path!r} is not a local directory and the hub is offline (HF_HUB_OFFLINE=1): "
            f"give a downloaded SigLIP/CLIP directory or a from-scratch preset ({config_hint})."
        )
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except OSError as error:  # not a local model, and the hub could not provide it
        raise FileNotFoundError(
            f"cannot load the vision tower {name_or_path!r}: not a local SigLIP/CLIP directory, not a preset "
            f"({', '.join(VISION_PRESETS)}), and the hub could not provide it ({str(error).splitlines()[0]})"
        ) from error
    if getattr(config, "model_type", "") not in {"siglip", "siglip_vision_model", "clip", "clip_vision_model"}:
        raise ValueError(f"{name_or_path} is a {config.model_type!r} model; WINGS needs a SigLIP or CLIP vision tower.")
    return AutoModel.from_pretrained(name_or_path, dtype=dtype)


def build_wings(
    llm: str,
    vision: str,
    dtype: torch.dtype = torch.float32,
    image_preprocess: str = "pad",
    **wings_options: Any,
) -> tuple[WingsForConditionalGeneration, WingsProcessor]:
    """A fresh WINGS model (new projector and learners around the given LLM and tower) and its processor."""
    language_model, tokenizer = load_llm(llm, dtype=dtype)
    tower = load_vision_tower(vision, dtype=dtype)
    model = WingsForConditionalGeneration.from_llm_and_vision(language_model, tower, **wings_options)
    model.config.base_llm = llm
    model.config.base_vision = vision
    image_processor_path = vision if Path(vision).is_dir() else None
    processor = WingsProcessor.from_model_config(
        tokenizer, model.config, image_processor_path=image_processor_path, image_preprocess=image_preprocess
    )
    return model, processor
