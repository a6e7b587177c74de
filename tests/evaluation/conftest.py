"""Tiny random causal LMs and a tiny byte-level BPE tokenizer, built offline, for the evaluation tests."""

from __future__ import annotations

import pytest

from tests.fixtures.models import make_model
from tests.fixtures.tokenizers import bpe_tokenizer

CORPUS = [
    "Question: What is the capital of France? Answer: Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog. A cat sat on the mat.",
    "Two plus two equals four. Ten times ten is one hundred.",
    "Once upon a time, in a small village by the sea, there lived an old fisherman.",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return bpe_tokenizer(CORPUS, vocab_size=300)


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
