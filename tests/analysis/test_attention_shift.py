"""The attention-shift metric on hand-built patterns, the kernel's segment sums against full attention, and what
the analysis leaves out: no shift for a model without an image, constant curves, text between images."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import wings.analysis.attention_shift as attention_shift_module
from tests.fixtures.models import COMMON, randomize_learners, sample, text_config, tiny_wings, vision_config
from wings import WingsConfig, WingsForConditionalGeneration
from wings.analysis.attention_shift import (
    AFTER,
    BEFORE,
    ITSELF,
    OUTSIDE,
    AnalysisSample,
    SegmentRecorder,
    analyze_model,
    attention_shift,
    laws_curves,
    llm_config,
    model_inputs,
    pearson,
    query_mask,
    recording_segment_mass,
    sample_segment_sums,
    sample_segments,
    segment_ids,
    segment_sums_from_attentions,
)

SEGMENTS_6 = torch.tensor([[BEFORE, BEFORE, 1, 1, AFTER, AFTER]])


def hand_built_attentions(before: list[float], after: list[float]) -> list[torch.Tensor]:
    """One (1, 2, 6, 6) matrix per layer: every query puts `before[l]` on V_before, `after[l]` on V_after."""
    layers = []
    for mass_before, mass_after in zip(before, after):
        row = torch.tensor([mass_before / 2] * 2 + [(1 - mass_before - mass_after) / 2] * 2 + [mass_after / 2] * 2)
        layers.append(row.expand(1, 2, 6, 6).clone())
    return layers


def shift_of(attentions: list[torch.Tensor], query_tokens: str = "all") -> float:
    sums = segment_sums_from_attentions(attentions, SEGMENTS_6, query_tokens)[:, 0]
    return attention_shift(laws_curves(sums, int(query_mask(SEGMENTS_6, query_tokens).sum())))


def test_same_pattern_before_and_after_gives_no_shift():
    assert shift_of(hand_built_attentions([0.1, 0.2, 0.35, 0.3], [0.1, 0.2, 0.35, 0.3])) == pytest.approx(0, abs=1e-12)
    # A positive linear relation is no shift either: Pearson ignores scale and offset.
    assert shift_of(hand_built_attentions([0.1, 0.2, 0.3], [0.2, 0.3, 0.4])) == pytest.approx(0, abs=1e-12)


def test_reversed_pattern_gives_two():
    assert shift_of(hand_built_attentions([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1])) == pytest.approx(2, abs=1e-12)


def test_uncorrelated_pattern_gives_one_and_constant_is_undefined():
    assert shift_of(hand_built_attentions([0.1, 0.3, 0.1, 0.3], [0.1, 0.1, 0.3, 0.3])) == pytest.approx(1, abs=1e-12)
    assert math.isnan(pearson([0.2, 0.2, 0.2], [0.1, 0.2, 0.3]))


def test_laws_curves_are_mass_per_query_token_without_per_layer_normalisation():
    sums = segment_sums_from_attentions(hand_built_attentions([0.1, 0.5], [0.2, 0.3]), SEGMENTS_6)[:, 0]
    assert torch.allclose(sums.sum(-1), torch.full((2,), 6.0, dtype=torch.float64))  # 6 queries, rows sum to 1
    laws = laws_curves(sums, num_queries=6)
    assert torch.allclose(laws.sum(-1), torch.ones(2, dtype=torch.float64))  # one image: the three sum to 1
    assert torch.allclose(laws[:, BEFORE], torch.tensor([0.1, 0.5], dtype=torch.float64))
    # Text between two images takes mass that changes with the layer: the curves are NOT renormalised per layer
    # (WINGS.md), so the shift is the correlation of the raw masses.
    sums = torch.tensor([[1.0, 2.0, 1.0], [2.0, 1.0, 2.0], [1.5, 1.0, 3.0]], dtype=torch.float64)  # 6 queries
    laws = laws_curves(sums, num_queries=6)
    assert torch.allclose(laws, sums / 6)
    assert attention_shift(laws) == pytest.approx(1 - pearson([1.0, 2.0, 1.5], [1.0, 2.0, 3.0]))
    per_layer = sums / sums.sum(-1, keepdim=True)  # the withdrawn normalisation gives another number
    assert attention_shift(per_layer) != pytest.approx(attention_shift(laws), abs=1e-3)
    with pytest.raises(ValueError, match="no query tokens"):
        laws_curves(sums, num_queries=0)


def test_segment_ids_and_query_choice():
    is_visual = torch.tensor([[0, 0, 1, 1, 0, 1, 0, 0]]).bool()
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]])
    assert segment_ids(is_visual, mask).tolist() == [[0, 0, 1, 1, OUTSIDE, 1, 2, OUTSIDE]]
    segments = segment_ids(is_visual, mask)
    assert query_mask(segments, "all").sum() == 6
    assert query_mask(segments, "after").tolist() == [[False] * 6 + [True, False]]
    with pytest.raises(ValueError, match="query_tokens"):
        query_mask(segments, "before")


def full_attention_reference(model, input_ids, pixel_values, segments, query_tokens):
    outputs = model(input_ids=input_ids, pixel_values=pixel_values, output_attentions=True, use_cache=False)
    assert outputs.attentions is not None and len(outputs.attentions) == 3
    return segment_sums_from_attentions(outputs.attentions, segments, query_tokens).float()


@pytest.mark.parametrize("query_tokens", ["all", "after"])
@pytest.mark.parametrize("learners", ["wings", "none"])
def test_segment_sums_equal_full_attention_on_mllms(learners, query_tokens):
    model = tiny_wings(family="llama", attn="eager", learners=learners)
    if learners == "wings":
        randomize_learners(model)
    ids, pixels = sample(model, text_before=(5, 6, 7, 8), text_after=(9, 10, 11))
    segments = segment_ids(ids == model.config.image_token_id)
    with torch.no_grad():
        expected = full_attention_reference(model, ids, pixels, segments, query_tokens)
    got = sample_segment_sums(model, ids, pixels, query_tokens=query_tokens)
    assert got.shape == (3, 1, 3)
    assert torch.allclose(got, expected, atol=1e-5)
    assert (got[:, :, 1] > 0).all()  # the image is attended to
    # SDPA, where no attention matrix exists, gives the same sums.
    sdpa = tiny_wings(family="llama", attn="sdpa", learners=learners)
    sdpa.load_state_dict(model.state_dict())
    assert torch.allclose(sample_segment_sums(sdpa, ids, pixels, query_tokens=query_tokens), expected, atol=1e-5)


def test_segment_sums_equal_full_attention_on_a_base_llm_with_padding():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(text_config("qwen2"), attn_implementation="eager").eval()
    ids = torch.tensor([[0, 0, 5, 6, 7, 8, 9, 10], [5, 6, 7, 8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    got = sample_segment_sums(model, ids, attention_mask=mask, before_length=3)
    positions = mask.cumsum(-1) - 1
    segments = torch.where(positions < 3, BEFORE, AFTER).masked_fill(mask == 0, OUTSIDE)
    with torch.no_grad():
        attentions = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    assert torch.allclose(got, segment_sums_from_attentions(attentions, segments).float(), atol=1e-5)
    assert (got[:, :, 1] == 0).all()  # no image: V_itself is empty
    assert torch.allclose(got[:, 0].sum(-1), torch.full((3,), 6.0), atol=1e-4)  # 6 real queries


def test_recording_keeps_outputs_and_restores_the_kernel():
    model = tiny_wings(attn="sdpa")
    randomize_learners(model)
    ids, pixels = sample(model)
    with torch.no_grad():
        reference = model(input_ids=ids, pixel_values=pixels).logits
        segments = segment_ids(ids == model.config.image_token_id)
        with recording_segment_mass(model, SegmentRecorder(segments, query_mask(segments))) as recorder:
            assert llm_config(model)._attn_implementation == "wings_analysis_wings_sdpa"
            recorded = model(input_ids=ids, pixel_values=pixels).logits
    assert torch.equal(recorded, reference)  # the router still reads its visual mass through the inner kernel
    assert sorted(recorder.sums) == [0, 1, 2]
    assert llm_config(model)._attn_implementation == "wings_sdpa"


def test_analyze_model_on_wings_baseline_and_base_llm_given_the_same_sample():
    wings = tiny_wings(family="llama")
    randomize_learners(wings)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(text_config("llama")).eval()
    pixels = sample(wings)[1][0]
    samples = [
        AnalysisSample([5, 6, 7, 8], [9, 10, 11, 12, 13], pixels, "a"),
        AnalysisSample([5, 7, 9], [11, 13, 15, 17], pixels, "b"),
    ]
    for model, has_image in ((wings, True), (base, False)):
        result = analyze_model(model, samples)
        assert result["num_samples"] == 2 and result["has_vision"] == has_image
        assert all(len(curve) == 3 for curve in result["laws"].values())
        totals = [sum(values) for values in zip(*result["laws"].values())]
        assert totals == pytest.approx([1.0] * 3)
        assert (result["laws"]["V_itself"][0] > 0) == has_image
        if has_image:
            assert 0 <= result["attention_shift"] <= 2 and result["num_without_image"] == 0
            assert all(s["attention_shift"] is not None for s in result["samples"])
        else:  # without an image the pearson is -1 by construction: no attention shift (WINGS.md), never 2
            assert result["attention_shift"] is None and result["num_without_image"] == 2
            assert all(s["attention_shift"] is None for s in result["samples"])
            forced = [attention_shift(torch.tensor(list(s["laws"].values())).T) for s in result["samples"]]
            assert forced == pytest.approx([2.0, 2.0])  # what a blind computation would have reported
        assert result["num_undefined_shift"] == 0 and result["num_multi_image"] == 0


def test_samples_with_a_constant_curve_are_left_out_of_the_mean_and_counted(monkeypatch):
    model = tiny_wings(family="llama")
    pixels = sample(model)[1][0]
    # Per sample, (layers, 1, 3) masses: V_after follows V_before (shift 0), V_before is flat (undefined), reversed (2).
    crafted = iter(
        [[[1, 1, 1], [2, 1, 2], [3, 1, 3]], [[2, 1, 1], [2, 1, 2], [2, 1, 3]], [[1, 1, 3], [2, 1, 2], [3, 1, 1]]]
    )
    monkeypatch.setattr(
        attention_shift_module,
        "sample_segment_sums",
        lambda *args, **kwargs: torch.tensor(next(crafted), dtype=torch.float64)[:, None],
    )
    samples = [AnalysisSample([5, 6], [7, 8], pixels, name) for name in ("same", "flat", "reversed")]
    result = analyze_model(model, samples)
    assert [s["attention_shift"] for s in result["samples"]][0::2] == pytest.approx([0.0, 2.0])
    assert math.isnan(result["samples"][1]["attention_shift"])
    assert result["attention_shift"] == pytest.approx(1.0)  # the mean of the defined shifts only
    assert result["num_undefined_shift"] == 1 and result["num_samples"] == 3


def test_a_one_layer_model_has_only_constant_curves():
    torch.manual_seed(0)
    one_layer = LlamaConfig(**{**COMMON, "num_hidden_layers": 1})
    model = WingsForConditionalGeneration(WingsConfig(text_config=one_layer, vision_config=vision_config())).eval()
    pixels = sample(model)[1][0]
    result = analyze_model(model, [AnalysisSample([5, 6, 7], [8, 9, 10], pixels, "a")])
    assert math.isnan(result["attention_shift"]) and result["num_undefined_shift"] == 1


def test_samples_with_several_images_warn_and_leave_the_text_between_images_out():
    model = tiny_wings(family="llama", attn="eager")
    randomize_learners(model)
    pixels = sample(model, images=2)[1]
    two_images = AnalysisSample([5, 6, 7], [8, 9, 10, 11], pixels[0], "two", between=[([20, 21], pixels[1])])
    one_image = AnalysisSample([5, 6, 7], [8, 9, 10, 11], pixels[0], "one")
    inputs = model_inputs(model, two_images)
    image = [model.config.image_token_id] * model.config.image_seq_length
    assert inputs["input_ids"][0].tolist() == [5, 6, 7] + image + [20, 21] + image + [8, 9, 10, 11]
    assert torch.equal(inputs["pixel_values"], pixels)
    with pytest.warns(UserWarning, match=r"1 of 2 samples have several images \('two'\).*between images"):
        result = analyze_model(model, [two_images, one_image])
    assert result["num_multi_image"] == 1 and [s["num_images"] for s in result["samples"]] == [2, 1]
    # The reference: full attention, the two tokens between the images in no segment (neither key nor query).
    segments = segment_ids(inputs["input_ids"] == model.config.image_token_id)
    between = slice(3 + model.config.image_seq_length, 5 + model.config.image_seq_length)
    assert (segments[0, between] == OUTSIDE).all() and (segments == ITSELF).sum() == 2 * model.config.image_seq_length
    with torch.no_grad():
        expected = full_attention_reference(model, inputs["input_ids"], inputs["pixel_values"], segments, "all")[:, 0]
    laws = torch.tensor([result["samples"][0]["laws"][name] for name in ("V_before", "V_itself", "V_after")]).T
    num_queries = int((segments != OUTSIDE).sum())
    assert torch.allclose(laws.float() * num_queries, expected, atol=1e-5)
    assert (laws.sum(-1) < 1 - 1e-4).all()  # the text between takes some mass: no renormalisation hides it
    # A base LLM reads the same text without the images: that text is in no segment either.
    base = AutoModelForCausalLM.from_config(text_config("llama")).eval()
    text_ids = model_inputs(base, two_images)["input_ids"]
    assert text_ids[0].tolist() == [5, 6, 7, 20, 21, 8, 9, 10, 11]
    assert sample_segments(base, text_ids, before_length=3, after_start=5)[0].tolist() == (
        [BEFORE] * 3 + [OUTSIDE] * 2 + [AFTER] * 4
    )
    with warnings.catch_warnings(record=True):
        assert analyze_model(base, [two_images])["attention_shift"] is None
