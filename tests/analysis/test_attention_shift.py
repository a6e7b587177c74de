"""The attention-shift metric on hand-built patterns, and the kernel's segment sums against full attention."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from wings.analysis.attention_shift import (
    AFTER,
    BEFORE,
    OUTSIDE,
    AnalysisSample,
    analyze_model,
    attention_shift,
    laws_curves,
    llm_config,
    pearson,
    recording_segment_mass,
    sample_segment_sums,
    segment_ids,
    segment_sums_from_attentions,
    SegmentRecorder,
    query_mask,
)
from tests.model.tiny import randomize_learners, sample, text_config, tiny_wings

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
    return attention_shift(laws_curves(sums))


def test_same_pattern_before_and_after_gives_no_shift():
    assert shift_of(hand_built_attentions([0.1, 0.2, 0.35, 0.3], [0.1, 0.2, 0.35, 0.3])) == pytest.approx(0, abs=1e-12)
    # A positive linear relation is no shift either: Pearson ignores scale and offset.
    assert shift_of(hand_built_attentions([0.1, 0.2, 0.3], [0.2, 0.3, 0.4])) == pytest.approx(0, abs=1e-12)


def test_reversed_pattern_gives_two():
    assert shift_of(hand_built_attentions([0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1])) == pytest.approx(2, abs=1e-12)


def test_uncorrelated_pattern_gives_one_and_constant_is_undefined():
    assert shift_of(hand_built_attentions([0.1, 0.3, 0.1, 0.3], [0.1, 0.1, 0.3, 0.3])) == pytest.approx(1, abs=1e-12)
    assert math.isnan(pearson([0.2, 0.2, 0.2], [0.1, 0.2, 0.3]))


def test_laws_curves_sum_to_one_per_layer():
    sums = segment_sums_from_attentions(hand_built_attentions([0.1, 0.5], [0.2, 0.3]), SEGMENTS_6)[:, 0]
    assert torch.allclose(sums.sum(-1), torch.full((2,), 6.0, dtype=torch.float64))  # 6 queries, rows sum to 1
    laws = laws_curves(sums)
    assert torch.allclose(laws.sum(-1), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(laws[:, BEFORE], torch.tensor([0.1, 0.5], dtype=torch.float64))


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
    samples = [AnalysisSample([5, 6, 7, 8], [9, 10, 11, 12, 13], pixels, "a"),
               AnalysisSample([5, 7, 9], [11, 13, 15, 17], pixels, "b")]  # fmt: skip
    for model, has_image in ((wings, True), (base, False)):
        result = analyze_model(model, samples)
        assert result["num_samples"] == 2 and result["has_vision"] == has_image
        assert all(len(curve) == 3 for curve in result["laws"].values())
        totals = [sum(values) for values in zip(*result["laws"].values())]
        assert totals == pytest.approx([1.0] * 3)
        assert (result["laws"]["V_itself"][0] > 0) == has_image
        if has_image:
            assert 0 <= result["attention_shift"] <= 2
        else:  # without an image the pearson is -1 by construction: no attention shift (WINGS.md), never 2
            assert result["attention_shift"] is None and result["num_without_image"] == 2
