"""A tiny WINGS checkpoint (model + processor saved in one folder) and an engine on it, built once per session."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import Qwen2Config, SiglipVisionConfig

from tests.data.chat_tokenizers import build_processor


def tiny_checkpoint(folder: Path) -> Path:
    """Save a random tiny WINGS model and a ChatML processor whose vocabularies agree (4 visual tokens per image)."""
    from wings import WingsConfig, WingsForConditionalGeneration

    processor = build_processor("chatml", image_size=16, patch_size=8)
    text_config = Qwen2Config(
        vocab_size=len(processor.tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0,
    )
    vision_config = SiglipVisionConfig(
        hidden_size=24, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=8
    )
    torch.manual_seed(0)
    config = WingsConfig(text_config=text_config, vision_config=vision_config, image_token_id=processor.image_token_id)
    model = WingsForConditionalGeneration(config).eval()
    with torch.no_grad():  # learners start as no-ops; give them values so the image path matters
        for parameter in model.wings_layers.parameters():
            parameter.normal_(0, 0.3)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny-wings"))


@pytest.fixture(scope="session")
def engine(checkpoint):
    from wings.serving.engine import GenerationEngine

    return GenerationEngine.from_checkpoint(checkpoint, device="cpu", dtype="float32")


def png_bytes(color=(200, 30, 30), size=(20, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_file(tmp_path) -> Path:
    path = tmp_path / "red.png"
    path.write_bytes(png_bytes())
    return path
