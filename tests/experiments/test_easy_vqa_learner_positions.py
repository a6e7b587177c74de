"""The experiment that lets the visual learner write only in the answer turn."""

from __future__ import annotations

import copy

import torch

from experiments.easy_vqa_learner_positions import last_turn_start, visual_learner_in_last_turn
from tests.fixtures.models import randomize_learners, sample, tiny_wings
from wings.model import wiring
from wings.model.modeling_wings import WingsForConditionalGeneration

TURN = 30  # a token id standing for <|im_start|>


def test_last_turn_start_is_the_rows_last_turn_token():
    ids = torch.tensor([[TURN, 5, TURN, 6, 7], [5, 6, 7, 8, 9], [0, 0, TURN, 5, 6]])
    assert last_turn_start(ids, TURN).tolist() == [2, 0, 2]


def test_the_visual_learner_writes_nothing_before_the_last_turn_and_the_library_is_back_after():
    model = tiny_wings(learners="visual")
    randomize_learners(model)
    silent = copy.deepcopy(model)  # the same model with the visual learner's output projection zeroed
    with torch.no_grad():
        for layer in silent.wings_layers.values():
            layer.visual_learner.output.up.weight.zero_()
    ids, pixels = sample(model, text_after=(8, TURN, 9, 10, TURN, 11, 12))
    start = int(last_turn_start(ids, TURN)[0])
    with torch.no_grad():
        with visual_learner_in_last_turn(TURN):
            patched = model(input_ids=ids, pixel_values=pixels).logits
        unpatched = model(input_ids=ids, pixel_values=pixels).logits
        without = silent(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(patched[:, :start], without[:, :start], rtol=0, atol=1e-6)
    assert (patched[:, start:] - without[:, start:]).abs().max() > 1e-3  # it writes from the turn on
    assert (unpatched[:, :start] - without[:, :start]).abs().max() > 1e-3  # the library's learner writes before
    assert WingsForConditionalGeneration._embed.__module__ == "wings.model.modeling_wings"
    assert wiring.build_learner_inputs.__module__ == "wings.model.learner_inputs"


def test_a_decoding_step_keeps_the_turn_start_of_its_prompt():
    model = tiny_wings(learners="visual")
    randomize_learners(model)
    ids, pixels = sample(model, text_after=(8, TURN, 9, 10))
    longer = torch.cat([ids, torch.tensor([[13]])], dim=1)
    with torch.no_grad(), visual_learner_in_last_turn(TURN):
        whole = model(input_ids=longer, pixel_values=pixels).logits[:, -1]
        prefill = model(input_ids=ids, pixel_values=pixels, use_cache=True)
        step = model(input_ids=longer[:, -1:], past_key_values=prefill.past_key_values, use_cache=True).logits[:, -1]
    torch.testing.assert_close(step, whole, rtol=1e-4, atol=1e-5)
