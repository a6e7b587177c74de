"""The learners' keys and values: the compact cache form against the full one, and gradient checkpointing."""

from __future__ import annotations

import pytest
import torch

from tests.fixtures.models import randomize_learners, sample, tiny_wings
from wings.model import learner_cache
from wings.model.learner_cache import CompactLayer, CompactSlotLayer, cache_bytes, cache_layer

GREEDY = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)


def pair(family: str = "qwen2", **options):
    """The same randomised model twice: one with the full learner cache, one with the compact one."""
    models = []
    for form in ("full", "compact"):
        model = tiny_wings(family, **options)
        randomize_learners(model)
        model.learner_cache = form
        models.append(model)
    return models


def step_by_step(model, ids, pixels, more_ids, more_pixels):
    """Logits of a prompt, one more turn with an image, then three single-token steps, through one cache."""
    outputs = []
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels, use_cache=True)
        outputs.append(out.logits)
        out = model(input_ids=more_ids, pixel_values=more_pixels, cache=out.cache, use_cache=True)
        outputs.append(out.logits)
        cache = out.cache
        for token in (7, 8, 9):
            out = model(input_ids=torch.tensor([[token]]), cache=cache, use_cache=True)
            outputs.append(out.logits)
    return outputs, cache


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_compact_cache_gives_the_full_caches_outputs_across_turns_and_images(family):
    full, compact = pair(family)
    ids, pixels = sample(full, images=1, seed=1)
    more_ids, more_pixels = sample(full, text_before=(30,), images=1, text_after=(31,), seed=2)
    want, full_cache = step_by_step(full, ids, pixels, more_ids, more_pixels)
    got, compact_cache = step_by_step(compact, ids, pixels, more_ids, more_pixels)
    for have, expected in zip(got, want):
        torch.testing.assert_close(have, expected, atol=1e-5, rtol=0)
    first = full._cache_index("text")
    assert isinstance(compact_cache.layers[first], CompactLayer)
    assert isinstance(compact_cache.layers[first + 1], CompactSlotLayer)
    assert not isinstance(full_cache.layers[first], CompactLayer)


def test_compact_cache_generation_equals_full_and_recomputation():
    full, compact = pair("llama")
    ids, pixels = sample(full, images=2)
    with torch.no_grad():
        want = full.generate(input_ids=ids, pixel_values=pixels, **GREEDY)
        got = compact.generate(input_ids=ids, pixel_values=pixels, **GREEDY)
        again = compact.generate(input_ids=ids, pixel_values=pixels, use_cache=False, **GREEDY)
        beams = dict(GREEDY, num_beams=3)
        beam_full = full.generate(input_ids=ids, pixel_values=pixels, **beams)
        beam_compact = compact.generate(input_ids=ids, pixel_values=pixels, **beams)
    assert torch.equal(got, want) and torch.equal(got, again)
    assert torch.equal(beam_compact, beam_full)


def test_compact_cache_with_a_left_padded_batch_equals_the_full_one():
    full, compact = pair("qwen2")
    ids_a, pixels_a = sample(full, images=1, seed=3)
    ids_b, pixels_b = sample(full, text_before=(9,), images=1, text_after=(12, 13), seed=4)
    pad = ids_a.shape[1] - ids_b.shape[1]
    ids = torch.cat([ids_a, torch.cat([torch.zeros(1, pad, dtype=torch.long), ids_b], 1)])
    mask = torch.cat([torch.ones_like(ids_a), torch.cat([torch.zeros(1, pad), torch.ones_like(ids_b)], 1).long()])
    pixels = torch.cat([pixels_a, pixels_b])
    with torch.no_grad():
        want = full.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, **GREEDY)
        got = compact.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, **GREEDY)
    assert torch.equal(got, want)


def test_compact_cache_holds_the_inputs_once_and_the_rank_r_parts_per_layer():
    full, compact = pair("qwen2", lorra_rank=3)
    ids, pixels = sample(full, images=1)
    with torch.no_grad():
        caches = [model(input_ids=ids, pixel_values=pixels, use_cache=True).cache for model in (full, compact)]
    first = full._cache_index("text")
    text = caches[1].layers[first]
    d, head_dim = full.config.text_config.hidden_size, full.config.text_config.hidden_size // 4
    layers, tokens = len(full.config.learner_layers), ids.shape[1]
    assert text.keys.shape == (1, 1, tokens, d + 2 * head_dim)  # X | cos | sin, once for every layer
    assert text.values.shape == (1, 1, tokens, 2 * layers * 3)  # X A_k, X A_v per layer, rank 3
    assert caches[0].layers[first].keys.shape == (1, layers, 4, tokens, head_dim)  # full: every layer's keys
    used = [layer.keys.numel() + layer.values.numel() for layer in (caches[0].layers[first], text)]
    assert used == [2 * layers * d * tokens, (d + 2 * head_dim + 2 * layers * 3) * tokens]
    assert cache_bytes(caches[0], first)[0] == cache_bytes(caches[1], first)[0]  # the LLM's own cache: the same


def test_cache_form_is_checked_and_auto_follows_the_device():
    with pytest.raises(ValueError, match="learner_cache='small' is not one of"):
        cache_layer("text", "small", torch.device("cpu"))
    assert not isinstance(cache_layer("text", "auto", torch.device("cpu")), CompactLayer)
    assert isinstance(cache_layer("text", "auto", torch.device("cuda")), CompactLayer)
    assert isinstance(cache_layer("visual", "compact", torch.device("cpu")), CompactSlotLayer)


def training_gradients(model, ids, pixels, checkpointing: bool) -> dict[str, torch.Tensor]:
    model.train()
    if checkpointing:
        model.activation_checkpointing_enable()
    model.zero_grad()
    labels = ids.masked_fill(ids == model.config.image_token_id, -100)
    model(input_ids=ids, pixel_values=pixels, labels=labels).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_checkpointing_covers_the_learners_and_gives_the_same_gradients(monkeypatch):
    """With checkpointing each layer's learner keys are made inside the layer, so backward makes them again."""
    ids, pixels = sample(tiny_wings("qwen2"), images=1)
    expansions = []
    expand = learner_cache.LowRankKeys.layer
    monkeypatch.setattr(learner_cache.LowRankKeys, "layer", lambda self, n: (expansions.append(n), expand(self, n))[1])
    results = {}
    for checkpointing in (False, True):
        model = tiny_wings("qwen2")
        randomize_learners(model)
        expansions.clear()
        results[checkpointing] = training_gradients(model, ids, pixels, checkpointing)
        results[checkpointing, "expansions"] = len(expansions)
    layers = len(tiny_wings("qwen2").config.learner_layers)
    assert results[False, "expansions"] == 2 * layers  # visual + textual learner, once per layer
    assert results[True, "expansions"] == 4 * layers  # and again in the backward pass
    assert results[True].keys() == results[False].keys()
    for name, gradient in results[False].items():
        torch.testing.assert_close(results[True][name], gradient, atol=1e-6, rtol=0, msg=name)
