"""A tiny byte-level BPE tokenizer and tiny saved causal LMs, built offline, for the analysis tests."""

from __future__ import annotations

import pytest

from tests.fixtures.tokenizers import bpe_tokenizer

CORPUS = [
    "Question: What is the capital of France? Answer: Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog. A cat sat on the mat. What colour is the sky?",
    "Two plus two equals four. Ten times ten is one hundred. Which animal barks?",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return bpe_tokenizer(CORPUS, vocab_size=96)
