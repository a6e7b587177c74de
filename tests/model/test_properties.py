"""The properties WINGS.md requires of the model, each as a test, on several LLM families and vision towers."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.fixtures.models import image_ids, randomize_learners, sample, tiny_wings
from wings import WingsConfig, WingsForConditionalGeneration
from wings.model import fused

FAMILIES = ["qwen2", "llama", "mistral", "qwen3"]
TOWERS = ["siglip", "clip"]
ATOL = 1e-6


def logits(model, ids, pixels=None, **kwargs):
    with torch.no_grad():
        return model(input_ids=ids, pixel_values=pixels, **kwargs).logits


# 1. Zero-init equivalence -------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_zero_init_text_only_equals_base_llm(family):
    model = tiny_wings(family)
    base_llm = copy.deepcopy(model.language_model)
    base_llm.config._attn_implementation_internal = "sdpa"  # the plain LLM, not our attention kernel
    ids = torch.tensor([[3, 14, 15, 92, 65, 35, 89, 79]])
    with torch.no_grad():
        expected = base_llm(input_ids=ids).logits
    torch.testing.assert_close(logits(model, ids), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family,tower", [("qwen2", "siglip"), ("llama", "clip"), ("qwen3", "siglip")])
def test_zero_init_image_input_equals_llava_baseline(family, tower):
    wings_model = tiny_wings(family, tower)
    baseline = tiny_wings(family, tower, learners="none")
    missing, unexpected = baseline.load_state_dict(wings_model.state_dict(), strict=False)
    assert not missing and all(key.startswith("wings_layers.") for key in unexpected)
    ids, pixels = sample(wings_model, images=2)
    torch.testing.assert_close(logits(wings_model, ids, pixels), logits(baseline, ids, pixels), atol=ATOL, rtol=0)
    # ... and the learners do change the output once trained (the test above is not vacuous)
    randomize_learners(wings_model)
    assert (logits(wings_model, ids, pixels) - logits(baseline, ids, pixels)).abs().max() > 1e-3


# 2. Causality -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,tower", [("qwen2", "siglip"), ("llama", "clip")])
@pytest.mark.parametrize("mode", ["wings", "visual"])
def test_changing_a_token_never_changes_earlier_outputs(family, tower, mode):
    model = tiny_wings(family, tower, learners=mode)
    randomize_learners(model)
    ids, pixels = sample(model, images=2)
    reference = logits(model, ids, pixels)
    for position in [2, ids.shape[1] - 3]:  # a text token before the images, one after them
        changed = ids.clone()
        changed[0, position] = 77
        out = logits(model, changed, pixels)
        torch.testing.assert_close(out[:, :position], reference[:, :position], atol=ATOL, rtol=0)
        assert (out[:, position:] - reference[:, position:]).abs().max() > 1e-4
    # changing the second image changes nothing before its first visual token
    second_image_start = (ids[0] == model.config.image_token_id).nonzero()[model.config.image_seq_length].item()
    other_pixels = pixels.clone()
    other_pixels[1] = torch.randn_like(other_pixels[1])
    out = logits(model, ids, other_pixels)
    torch.testing.assert_close(out[:, :second_image_start], reference[:, :second_image_start], atol=ATOL, rtol=0)
    assert (out[:, second_image_start:] - reference[:, second_image_start:]).abs().max() > 1e-4


# 3. KV cache --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family,tower", [("qwen2", "siglip"), ("llama", "clip"), ("qwen3", "siglip")])
def test_cached_generation_equals_recomputation(family, tower):
    model = tiny_wings(family, tower)
    randomize_learners(model)
    ids, pixels = sample(model, images=2)
    kwargs = dict(input_ids=ids, pixel_values=pixels, max_new_tokens=12, do_sample=False, min_new_tokens=12)
    with torch.no_grad():
        cached = model.generate(**kwargs, use_cache=True)
        recomputed = model.generate(**kwargs, use_cache=False)
    assert cached.shape[1] == ids.shape[1] + 12
    assert torch.equal(cached, recomputed)


@pytest.mark.parametrize("first_has_image", [True, False])
def test_cache_continues_across_turns_with_new_images(first_has_image):
    """Prefill turn 1, then turn 2 (with another image) on the same cache == one forward over both turns."""
    model = tiny_wings("qwen2")
    randomize_learners(model)
    turn1, pixels1 = sample(model, images=1 if first_has_image else 0, seed=1)
    turn2, pixels2 = sample(model, text_before=(30, 31), images=1, text_after=(40, 41), seed=2)
    everything = torch.cat([turn1, turn2], dim=1)
    all_pixels = torch.cat([p for p in (pixels1, pixels2) if p is not None])
    full = logits(model, everything, all_pixels)
    with torch.no_grad():
        first = model(input_ids=turn1, pixel_values=pixels1, use_cache=True)
        mask = torch.ones_like(everything)
        second = model(input_ids=turn2, pixel_values=pixels2, cache=first.cache, attention_mask=mask, use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), full, atol=1e-5, rtol=0)


# 4. Padding ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_samples_alone(side):
    """A batch of a two-image sample and a text-only one, padded, gives each sample's own outputs."""
    model = tiny_wings("llama", "siglip")
    randomize_learners(model)
    long_ids, long_pixels = sample(model, images=2)
    short_ids = torch.tensor([[4, 5, 6, 7, 8]])
    pad = long_ids.shape[1] - short_ids.shape[1]
    padding = torch.zeros(1, pad, dtype=torch.long)
    short_padded = torch.cat([padding, short_ids] if side == "left" else [short_ids, padding], dim=1)
    short_mask = torch.cat(
        [padding, torch.ones_like(short_ids)] if side == "left" else [torch.ones_like(short_ids), padding], dim=1
    )
    batch = torch.cat([long_ids, short_padded])
    mask = torch.cat([torch.ones_like(long_ids), short_mask])
    out = logits(model, batch, long_pixels, attention_mask=mask)
    torch.testing.assert_close(out[:1], logits(model, long_ids, long_pixels), atol=1e-5, rtol=0)
    real = short_mask[0].bool()
    torch.testing.assert_close(out[1, real], logits(model, short_ids)[0], atol=1e-5, rtol=0)


def test_left_padded_batch_generation_equals_single_generation():
    model = tiny_wings("qwen2", "siglip")
    randomize_learners(model)
    ids_a, pixels_a = sample(model, images=1, seed=3)
    ids_b, pixels_b = sample(model, text_before=(9,), images=1, text_after=(12, 13), seed=4)
    pad = ids_a.shape[1] - ids_b.shape[1]
    batch = torch.cat([ids_a, torch.cat([torch.zeros(1, pad, dtype=torch.long), ids_b], 1)])
    mask = torch.cat([torch.ones_like(ids_a), torch.cat([torch.zeros(1, pad), torch.ones_like(ids_b)], 1).long()])
    options = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        together = model.generate(
            input_ids=batch, attention_mask=mask, pixel_values=torch.cat([pixels_a, pixels_b]), **options
        )
        alone_a = model.generate(input_ids=ids_a, pixel_values=pixels_a, **options)
        alone_b = model.generate(input_ids=ids_b, pixel_values=pixels_b, **options)
    assert torch.equal(together[0, -8:], alone_a[0, -8:])
    assert torch.equal(together[1, -8:], alone_b[0, -8:])


# 5. Text-only input -------------------------------------------------------------------------------------------
def test_text_only_input_skips_visual_learner_and_gives_textual_weight_one():
    model = tiny_wings("qwen2")
    randomize_learners(model)
    calls = {"router": 0}
    for layer in model.wings_layers.values():
        layer.router.register_forward_hook(lambda *a: calls.__setitem__("router", calls["router"] + 1))
        for parameter in layer.visual_learner.parameters():  # NaN would reach the output if anything read them
            parameter.data.fill_(float("nan"))
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    out = logits(model, ids)
    assert calls == {"router": 0} and torch.isfinite(out).all()
    # w_t = 1: the same as running the textual learner alone with weight 1 (visual learner removed)
    textual_only = copy.deepcopy(model)
    for layer in textual_only.wings_layers.values():
        layer.visual_learner = None
    torch.testing.assert_close(out, logits(textual_only, ids), atol=ATOL, rtol=0)


def test_router_gives_textual_weight_one_before_the_first_image():
    model = tiny_wings("qwen2")
    randomize_learners(model)
    captured = []
    model.wings_layers["0"].router.register_forward_hook(lambda module, args, out: captured.append(out))
    ids, pixels = sample(model, text_before=(5, 6, 7), images=1)
    logits(model, ids, pixels)
    visual_weight, textual_weight = captured[0]
    assert torch.all(visual_weight[0, :3] == 0) and torch.all(textual_weight[0, :3] == 1)
    after = slice(3, None)
    assert torch.all(visual_weight[0, after] > 0) and torch.allclose(
        visual_weight[0, after] + textual_weight[0, after], torch.ones(1)
    )


# 6. Attention backend -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_sdpa_and_eager_give_the_same_outputs_and_router_weights(family):
    results = {}
    for backend in ["sdpa", "eager"]:
        model = tiny_wings(family, attn=backend)
        randomize_learners(model)
        captured = []
        for layer in model.wings_layers.values():
            layer.router.register_forward_hook(lambda module, args, out: captured.append(torch.cat(out, -1)))
        ids, pixels = sample(model, images=2)
        results[backend] = (logits(model, ids, pixels), torch.stack(captured))
        assert model.language_model.config._attn_implementation == f"wings_{backend}"
    torch.testing.assert_close(results["sdpa"][0], results["eager"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(results["sdpa"][1], results["eager"][1], atol=1e-5, rtol=0)


def test_router_mass_equals_attention_probabilities_on_visual_keys():
    """The extra value channel gives exactly sum_j A[i, j] over visual keys (checked against eager weights)."""
    model = tiny_wings("llama", attn="eager")
    randomize_learners(model)
    ids, pixels = sample(model, images=1)
    weights = []
    model.language_model.model.layers[1].self_attn.register_forward_hook(lambda m, a, out: weights.append(out[1]))
    masses = []
    model.wings_layers["1"].router.register_forward_pre_hook(lambda m, args: masses.append(args[0]))
    logits(model, ids, pixels)
    visual = ids[0] == model.config.image_token_id
    expected = weights[0][0][:, :, visual].sum(-1).transpose(0, 1)  # (L, H)
    torch.testing.assert_close(masses[0][0], expected.float(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_decoding_step_attention_equals_the_indicator_channel(mask_kind):
    """A decoding step's plain single-query attention gives the outputs, weights and visual mass of the channel path."""
    from types import SimpleNamespace

    from wings.model.attention import attend_with_indicators, eager_attention, single_query_attention

    generator = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, keys, dim = 2, 6, 2, 9, 8
    query = torch.randn(batch, heads, 1, dim, generator=generator)
    key, value = (torch.randn(batch, kv_heads, keys, dim, generator=generator) for _ in range(2))
    is_visual = torch.zeros(batch, keys, 1, dtype=torch.bool)
    is_visual[0, 2:5] = is_visual[1, 1:3] = True
    allowed = torch.ones(batch, 1, 1, keys, dtype=torch.bool)
    allowed[1, ..., :2] = False  # left padding of the second sample
    mask = {"none": None, "bool": allowed, "additive": torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))}[
        mask_kind
    ]
    module = SimpleNamespace(scaling=dim**-0.5, training=False)
    additive = None if mask is None else torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    expected = attend_with_indicators(eager_attention, module, query, key, value, additive, is_visual)
    got = single_query_attention(module, query, key, value, mask, is_visual)
    for name, want, have in zip(("output", "weights", "mass"), expected, got):
        torch.testing.assert_close(have, want, atol=1e-6, rtol=0, msg=name)
    if mask is not None:
        assert got[1][1, ..., :2].abs().max() == 0  # padded keys get no weight


def test_switching_backend_after_construction_keeps_the_router_input():
    model = tiny_wings("qwen2")
    randomize_learners(model)
    ids, pixels = sample(model, images=1)
    before = logits(model, ids, pixels)
    model.set_attn_implementation("eager")
    assert model.language_model.config._attn_implementation == "wings_eager"
    torch.testing.assert_close(logits(model, ids, pixels), before, atol=1e-5, rtol=0)


# 7. Images anywhere -------------------------------------------------------------------------------------------
def test_images_anywhere_including_none_and_back_to_back():
    model = tiny_wings("qwen2")
    randomize_learners(model)
    size = model.config.vision_config.image_size
    ids = torch.tensor([image_ids(model, 2) + [5, 6] + image_ids(model) + [7]])  # starts with two images
    pixels = torch.randn(3, 3, size, size)
    out = logits(model, ids, pixels)
    assert out.shape == (1, ids.shape[1], model.config.text_config.vocab_size) and torch.isfinite(out).all()
    no_images = logits(model, torch.tensor([[5, 6, 7]]))
    assert torch.isfinite(no_images).all()


def test_layer_subset_and_rank_are_configurable():
    model = tiny_wings("qwen2", wings_layers=[0, 2], lorra_rank=3)
    assert sorted(model.wings_layers.keys()) == ["0", "2"]
    assert model.wings_layers["0"].visual_learner.query.down.weight.shape == (3, 32)
    randomize_learners(model)
    with torch.no_grad():
        generated = model.generate(*sample(model)[:1], pixel_values=sample(model)[1], max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == sample(model)[0].shape[1] + 4


def test_from_llm_and_vision_uses_the_given_modules():
    reference = tiny_wings("llama", "clip")
    llm, vision = reference.language_model, reference.vision_tower
    model = WingsForConditionalGeneration.from_llm_and_vision(llm, vision, learners="wings", lorra_rank=4)
    assert model.language_model is llm and model.vision_tower is vision
    assert model.config.lorra_rank == 4 and isinstance(model.config, WingsConfig)
    assert model.config.text_config.model_type == "llama" and model.config.vision_config.model_type.startswith("clip")
    assert vision.config._attn_implementation == "sdpa"  # the composite config must not reset the tower's backend
    assert llm.config._attn_implementation == "wings_sdpa"
    eager = WingsForConditionalGeneration.from_llm_and_vision(
        tiny_wings("qwen2").language_model, tiny_wings("qwen2").vision_tower, attn_implementation="eager"
    )
    assert eager.language_model.config._attn_implementation == "wings_eager"


def test_beam_search_with_the_cache_equals_recomputation():
    model = tiny_wings("qwen2")
    randomize_learners(model)
    ids, pixels = sample(model, images=2)
    options = dict(input_ids=ids, pixel_values=pixels, max_new_tokens=6, min_new_tokens=6, num_beams=3, do_sample=False)
    with torch.no_grad():
        assert torch.equal(model.generate(**options, use_cache=True), model.generate(**options, use_cache=False))


def test_visual_learner_caches_only_visual_tokens():
    """The visual learner attends to (and caches) the image tokens only, not every position."""
    model = tiny_wings("qwen2")
    ids, pixels = sample(model, images=2)
    with torch.no_grad():
        cache = model(input_ids=ids, pixel_values=pixels, use_cache=True).cache
    layers = len(model.config.learner_layers)
    visual = cache.layers[model._cache_index("visual")].keys  # (B, layers, H, visual keys, D)
    assert visual.shape[1] == layers and visual.shape[-2] == 2 * model.config.image_seq_length
    text = cache.layers[model._cache_index("text")].keys
    assert text.shape[1] == layers and text.shape[-2] == ids.shape[1]


def test_expanding_for_beams_keeps_each_samples_images_together():
    model = tiny_wings("qwen2")
    ids_a, pixels_a = sample(model, images=2, seed=1)
    ids_b, pixels_b = sample(model, images=1, text_after=tuple(range(8, 18)), seed=2)  # same length as a
    ids = torch.cat([ids_a, ids_b])
    _, expanded = model._expand_inputs_for_generation(2, input_ids=ids, pixel_values=torch.cat([pixels_a, pixels_b]))
    expected = torch.cat([pixels_a, pixels_a, pixels_b, pixels_b])
    assert torch.equal(expanded["pixel_values"], expected)


# The batched learner code against the formulas of WINGS.md, written out plainly ---------------------------------
def reference_learner(learner, x, key_input, admissible, rotary_queries, rotary_keys):
    """L(x, X) = O A_o B_o with O = softmax(Q K^T / sqrt(d/H) + mask) V, Q/K/V = input + input A B, rotary on Q, K;
    a query with no admissible key gives 0. x (L, d), key_input (T, d), admissible (L, T), rotary: (cos, sin)."""
    heads = learner.num_heads

    def split(t):
        return t.view(t.shape[0], heads, -1).transpose(0, 1)  # (H, n, D)

    def rotate(t, cos, sin):
        first, second = t.chunk(2, dim=-1)
        return t * cos + torch.cat((-second, first), dim=-1) * sin

    q = rotate(split(learner.query(x)), *rotary_queries)
    k = rotate(split(learner.key(key_input)), *rotary_keys)
    v = split(learner.value(key_input))
    scores = (q @ k.transpose(1, 2)) / (q.shape[-1] ** 0.5)
    weights = torch.softmax(scores.masked_fill(~admissible, float("-inf")), dim=-1).nan_to_num(0.0)
    return learner.output((weights @ v).transpose(0, 1).reshape(x.shape))


def test_learner_outputs_follow_the_written_out_formulas():
    model = tiny_wings("llama")
    randomize_learners(model)
    ids, pixels = sample(model, images=2)
    records = {}
    original = fused.wings_layer  # the fast path the model runs

    def record(layer, x, attention_output, keys, cos, sin, masks, visual_mass):
        result = original(layer, x, attention_output, keys, cos, sin, masks, visual_mass)
        records[layer] = (x[0], result[0] - attention_output[0], visual_mass[0])
        return result

    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(fused, "wings_layer", record)
        model(input_ids=ids, pixel_values=pixels)
        embeds = model.get_input_embeddings()(ids.masked_fill(ids == model.config.image_token_id, 0))
        features = model.get_image_features(pixels).reshape(-1, embeds.shape[-1])
    is_visual = ids[0] == model.config.image_token_id
    embeds[0, is_visual] = features
    positions = torch.arange(ids.shape[1])
    cos, sin = (table[0] for table in model.language_model.model.rotary_emb(embeds, positions[None]))
    causal = positions[None, :] <= positions[:, None]
    seen_image = torch.cumsum(is_visual, 0)[:, None] > 0
    assert len(records) == len(model.wings_layers)
    for index, layer in model.wings_layers.items():
        x, added, mass = records[layer]
        visual = reference_learner(
            layer.visual_learner,
            x,
            embeds[0, is_visual],
            causal[:, is_visual],
            (cos, sin),
            (cos[is_visual], sin[is_visual]),
        )
        text = reference_learner(
            layer.textual_learner, x, embeds[0], causal & ~is_visual[None, :], (cos, sin), (cos, sin)
        )
        weights = torch.softmax(layer.router.proj(mass), dim=-1)
        w_v = torch.where(seen_image, weights[:, :1], 0.0)
        w_t = torch.where(seen_image, weights[:, 1:], 1.0)
        torch.testing.assert_close(added, w_v * visual + w_t * text, atol=1e-5, rtol=1e-4, msg=f"layer {index}")


def test_in_place_learner_cache_layer_behaves_like_the_concatenating_one():
    """AppendLayer (the learners' cache) writes into spare room; reorder, crop and repeat must still hold."""
    from transformers.cache_utils import DynamicLayer

    from wings.model.learner_cache import AppendLayer

    generator = torch.Generator().manual_seed(0)
    reference, in_place = DynamicLayer(), AppendLayer()

    def step(length):
        batch = reference.keys.shape[0] if reference.is_initialized else 2
        new = torch.randn(batch, 3, 4, length, 8, generator=generator)
        expected, got = reference.update(new, -new), in_place.update(new, -new)
        assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])

    for length in (5, 1, 1, 40, 1):
        step(length)
    for operation in (
        lambda layer: layer.reorder_cache(torch.tensor([1, 0])),
        lambda layer: layer.crop(-3),
        lambda layer: layer.batch_repeat_interleave(2),
        lambda layer: layer.batch_select_indices(torch.tensor([0, 3])),
    ):
        operation(reference)
        operation(in_place)
        step(1)
        step(2)
    assert in_place.get_seq_length() == reference.get_seq_length()


def test_learner_weights_changed_after_a_forward_are_used_by_the_next():
    """Without autograd the batched learner weights are kept between calls; any change to a weight must show."""
    model = tiny_wings("qwen2")
    randomize_learners(model)
    ids, pixels = sample(model)
    with torch.no_grad():
        model(input_ids=ids, pixel_values=pixels)
        for number, parameter in enumerate(model.wings_layers.parameters()):
            if number % 2:
                parameter.mul_(1.5)  # in place
            else:
                parameter.data = parameter.data * 0.5  # a new tensor behind the same parameter
        after = model(input_ids=ids, pixel_values=pixels).logits
        fresh = copy.deepcopy(model)
        for layer in fresh.wings_layers.modules():
            layer.__dict__.pop("_stacked_weights", None)
        expected = fresh(input_ids=ids, pixel_values=pixels).logits
    assert torch.equal(after, expected)
