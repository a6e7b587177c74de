"""Tiny random causal LMs and a tiny byte-level BPE tokenizer, built offline, for the evaluation tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
CORPUS = [
    "Question: What is the capital of France? Answer: Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog. A cat sat on the mat.",
    "Two plus two equals four. Ten times ten is one hundred.",
    "Once upon a time, in a small village by the sea, there lived an old fisherman.",
] * 20


def shared_data() -> Path:
    """`../shared/data` from the repository root, or skip the test with the reason."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA.resolve()} (only present in the project workspace)")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>", "<bos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", bos_token="<bos>", pad_token="<eos>")


def make_model(vocab_size: int, seed: int = 0, family: str = "llama"):
    """A 2-layer random causal LM; `family` picks LlamaConfig or Qwen2Config."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config_class = LlamaConfig if family == "llama" else Qwen2Config
    config = config_class(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return make_model(len(tiny_tokenizer), seed=0)


@pytest.fixture(scope="session")
def tiny_dirs(tiny_tokenizer, tmp_path_factory):
    """Two saved tiny models (a 'base' and a different 'tuned' one) sharing the tokenizer."""
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for name, seed, family in (("base", 0, "llama"), ("tuned", 1, "qwen2")):
        make_model(len(tiny_tokenizer), seed=seed, family=family).save_pretrained(root / name)
        tiny_tokenizer.save_pretrained(root / name)
        paths[name] = root / name
    return paths
