"""The visual learner at the answer turn only: an experiment, not the paper's learner, not the library's.

The paper's visual learner adds what the image shows to every token after the image, the question's words
included: in "is there a blue shape?" asked of a red image, the token "blue" gets a red-ish update in every learner
layer. If that blurs the word the question asks about, the LLM has nothing clean to compare with. Here the learner
writes only from the last turn's start (`<|im_start|>` of the assistant turn) onwards, so the question's words stay
as the LLM wrote them. `python -m experiments.easy_vqa_stage1 --visual-learner-at answer` trains and scores with it
(docs/results/demo.md, "Why yes/no").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from wings.model import wiring
from wings.model.modeling_wings import WingsForConditionalGeneration


def last_turn_start(input_ids: torch.Tensor, turn_token_id: int) -> torch.Tensor:
    """(B,) index of each row's last `turn_token_id` (0 where the row has none: the learner then writes everywhere)."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    return torch.where(input_ids == turn_token_id, positions, 0).amax(dim=1)


@contextmanager
def visual_learner_in_last_turn(turn_token_id: int) -> Iterator[None]:
    """Within the block, every WINGS forward zeroes the visual learner (router weight w_v = 0, w_t = 1) at tokens
    before the row's last `turn_token_id`. A forward of several tokens (training, a prompt's prefill) sets where the
    turn starts; a decoding step of one token keeps it."""
    state: dict[str, Any] = {"start": None}
    library_embed, library_inputs = WingsForConditionalGeneration._embed, wiring.build_learner_inputs

    def embed(self, input_ids, pixel_values, inputs_embeds):
        if input_ids is not None and input_ids.shape[1] > 1:
            state["start"] = last_turn_start(input_ids, turn_token_id)
        return library_embed(self, input_ids, pixel_values, inputs_embeds)

    def learner_inputs(inputs_embeds, is_visual, attention_mask, position_ids, past_length, **kwargs):
        context = library_inputs(inputs_embeds, is_visual, attention_mask, position_ids, past_length, **kwargs)
        if context.has_visual_key is not None and state["start"] is not None:
            length = inputs_embeds.shape[1]
            query_index = torch.arange(past_length, past_length + length, device=inputs_embeds.device)
            in_turn = query_index[None, :] >= state["start"].to(query_index.device)[:, None]
            context.has_visual_key = context.has_visual_key & in_turn
        return context

    WingsForConditionalGeneration._embed, wiring.build_learner_inputs = embed, learner_inputs
    try:
        yield
    finally:
        WingsForConditionalGeneration._embed, wiring.build_learner_inputs = library_embed, library_inputs
