"""A tiny byte-level BPE tokenizer and tiny saved causal LMs, built offline, for the analysis tests."""

from __future__ import annotations

import pytest

CORPUS = [
    "Question: What is the capital of France? Answer: Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog. A cat sat on the mat. What colour is the sky?",
    "Two plus two equals four. Ten times ten is one hundred. Which animal barks?",
] * 20


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=96, special_tokens=["<eos>", "<bos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", bos_token="<bos>", pad_token="<eos>")
