"""Perplexity is exp(mean NLL); KL against the base is 0 for the base itself and positive otherwise."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_model

from wings.evaluation.divergence import continuation_divergence, reference_sequences
from wings.evaluation.perplexity import file_perplexity, text_perplexity

TEXT = "The quick brown fox jumps over the lazy dog. Two plus two equals four. Once upon a time"


def test_perplexity_is_exp_of_mean_nll_by_hand(tiny_model, tiny_tokenizer):
    tokens = tiny_tokenizer.encode(TEXT, add_special_tokens=False)
    ids = torch.tensor([[tiny_tokenizer.bos_token_id] + tokens])
    with torch.no_grad():
        log_probs = torch.log_softmax(tiny_model(input_ids=ids).logits[0], -1)
    nlls = [-log_probs[i, token].item() for i, token in enumerate(tokens)]
    expected = math.exp(sum(nlls) / len(nlls))
    result = text_perplexity(tiny_model, tiny_tokenizer, TEXT)
    assert result["num_tokens"] == len(tokens)
    assert result["perplexity"] == pytest.approx(expected, rel=1e-5)
    # Windows: each token is still predicted exactly once, from at least the token before it.
    windowed = text_perplexity(tiny_model, tiny_tokenizer, TEXT, window=5, batch_size=3)
    assert windowed["num_tokens"] == len(tokens) and windowed["perplexity"] > 1


def test_perplexity_of_a_file(tiny_model, tiny_tokenizer, tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT)
    assert file_perplexity(tiny_model, tiny_tokenizer, path) == text_perplexity(tiny_model, tiny_tokenizer, TEXT)
    with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
        file_perplexity(tiny_model, tiny_tokenizer, tmp_path / "missing.txt")


def test_kl_of_model_against_itself_is_zero(tiny_model, tiny_tokenizer):
    sequences = reference_sequences(tiny_model, tiny_tokenizer, ["The quick brown", "Two plus two"], max_new_tokens=6)
    assert all(len(ids) == length + 6 for ids, length in sequences)
    same_object = continuation_divergence(tiny_model, tiny_model, sequences)
    twin = continuation_divergence(copy.deepcopy(tiny_model), tiny_model, sequences, batch_size=1)
    assert same_object["kl"] == 0.0 and twin["kl"] == pytest.approx(0.0, abs=1e-6)
    assert twin["perplexity"] == pytest.approx(same_object["perplexity"], rel=1e-5)
    other = continuation_divergence(make_model(len(tiny_tokenizer), seed=7), tiny_model, sequences)
    assert other["kl"] > 1e-4 and other["num_tokens"] == 12


def test_kl_compares_on_the_base_vocabulary(tiny_model, tiny_tokenizer):
    # A WINGS model adds an image token: one more logit. KL is taken on the shared vocabulary.
    bigger = make_model(len(tiny_tokenizer) + 1, seed=0)
    state = {
        key: value
        for key, value in tiny_model.state_dict().items()
        if "embed_tokens" not in key and "lm_head" not in key
    }
    bigger.load_state_dict(state, strict=False)
    with torch.no_grad():
        bigger.model.embed_tokens.weight[:-1] = tiny_model.model.embed_tokens.weight
        bigger.lm_head.weight[:-1] = tiny_model.lm_head.weight
    sequences = reference_sequences(tiny_model, tiny_tokenizer, ["Once upon"], max_new_tokens=4)
    assert continuation_divergence(bigger, tiny_model, sequences)["kl"] == pytest.approx(0.0, abs=1e-5)


def test_several_models_at_once_equal_one_at_a_time(tiny_model, tiny_tokenizer):
    """`continuation_divergences` runs the base once per batch; each model's numbers are those it gets alone."""
    from wings.evaluation.divergence import continuation_divergences

    prompts = ["The quick brown", "Two plus", "Once"]
    sequences = reference_sequences(tiny_model, tiny_tokenizer, prompts, max_new_tokens=5)
    vocab = len(tiny_tokenizer)
    others = {"base": tiny_model, "a": make_model(vocab, seed=3), "b": make_model(vocab, seed=4)}
    together = continuation_divergences(others, tiny_model, sequences, batch_size=2)
    for name, model in others.items():
        alone = continuation_divergence(model, tiny_model, sequences, batch_size=2)
        assert together[name]["kl"] == pytest.approx(alone["kl"], abs=1e-7)
        assert together[name]["perplexity"] == pytest.approx(alone["perplexity"], rel=1e-6)
    assert together["base"]["kl"] == 0.0 and together["a"]["kl"] > 1e-4


def _generated_alone(model, tokenizer, prompts, max_new_tokens):
    sequences = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer.encode(prompt)])
        output = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.eos_token_id,
        )
        sequences.append((output[0].tolist(), ids.shape[1]))
    return sequences


def test_batched_references_equal_each_prompt_generated_alone(tiny_model, tiny_tokenizer):
    prompts = ["The quick brown", "Two plus", "Once upon a time there", "A"]  # different lengths: left padding
    alone = _generated_alone(tiny_model, tiny_tokenizer, prompts, 6)
    assert reference_sequences(tiny_model, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=3) == alone

    # With the first prompt's first new token as end-of-sequence, its generation stops there when alone; in a
    # batch the others go on, and its continuation must still end at that token.
    stopping = copy.deepcopy(tiny_model)
    stopping.generation_config.eos_token_id = alone[0][0][alone[0][1]]
    alone = _generated_alone(stopping, tiny_tokenizer, prompts, 6)
    assert len(alone[0][0]) == alone[0][1] + 1 and max(len(ids) - length for ids, length in alone) == 6
    assert reference_sequences(stopping, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=4) == alone
