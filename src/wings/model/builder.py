"""Build a WINGS model and its processor from names: an LLM (registry name, hub id, local path) and a vision
tower (hub id, local path, a pretrained preset shipped on PyPI, or a from-scratch preset; `vision_towers.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .modeling_wings import WingsForConditionalGeneration
from .processing_wings import WingsProcessor
from .registry import load_llm
from .vision_towers import load_vision_tower


def build_wings(
    llm: str,
    vision: str,
    dtype: torch.dtype = torch.float32,
    image_preprocess: str = "pad",
    system_prompt: str | None = None,
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
        tokenizer,
        model.config,
        image_processor_path=image_processor_path,
        image_preprocess=image_preprocess,
        system_prompt=system_prompt,
    )
    return model, processor
