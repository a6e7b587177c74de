"""What every WINGS layer of one forward pass shares: masks, gathered visual keys, rotary tables.

The model builds one `LearnerInputs` per forward (`build_learner_inputs`) and passes it down the LLM as the keyword
argument `wings_context` (transformers hands a decoder layer's keyword arguments on to its attention module and to
the attention function): the attention kernel records the router's input there (`attention.py`), and the hook on
each layer's `self_attn` reads it (`wiring.py`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import torch

from .fused import rotary_tables
from .learner_cache import KeyMarksLayer
from .learners import LearnerKeys


@dataclass
class LearnerInputs:
    """The per-forward context of the learners.

    The textual learner sees every key of the sequence (text keys admissible); the visual learner only the visual
    keys, gathered per sample into slots. Masks are additive (B, 1, L, keys) for the L new queries; keys cover the
    cache too, and rows without an admissible key admit every key (their output is zeroed through `*_has_key`).
    """

    key_input: torch.Tensor  # (B, L, d): the LLM's input embeddings of this step (X_t at text positions)
    key_is_visual: torch.Tensor  # (B, T) bool, every key so far (the router's indicator channel)
    text_key_mask: torch.Tensor | None  # (B, 1, L, T) additive: text, valid, causal; None: plainly causal
    text_has_key: torch.Tensor | None  # (B, L) bool: some text key admissible; None: every query has one
    visual_key_input: torch.Tensor | None  # (B, N, d): this step's visual features X_v (N slots, padded)
    visual_cos: torch.Tensor | None  # rotary tables at those slots' positions (fused.rotary_tables)
    visual_sin: torch.Tensor | None
    visual_key_mask: torch.Tensor | None  # (B, 1, L, V) additive, every visual key so far: valid and causal
    has_visual_key: torch.Tensor | None  # (B, L) bool: some visual token at or before the query
    any_visual: bool  # False: the visual learner and the router are skipped (they would add exactly 0)
    run_visual: bool = False  # run them anyway (text-only training batch: every rank runs the same modules)
    cos: torch.Tensor | None = None  # rotary tables at this step's positions, learner head size (rotary_tables)
    sin: torch.Tensor | None = None
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None  # the plain (cos, sin) (B, L, D) of this step
    visual_rotary: tuple[torch.Tensor, torch.Tensor] | None = None  # ... and of the visual slots (B, N, D)
    learner_layers: Collection[int] = frozenset()
    routed: bool = True
    plain: bool = False  # run `WingsLayer.forward` (learners.py) instead of the fast path (no KV cache only)
    # Written by the attention kernel of each learner layer: (B, L, H) attention mass on visual keys.
    visual_mass: dict[int, torch.Tensor] = field(default_factory=dict)
    # Per kind ("visual", "text"): every learner layer's keys and values, the cache's included; `.layer(n)` gives
    # layer n's, each (B, H, T, D) (learner_cache.LowRankKeys / FullKeys).
    learner_keys: dict[str, Any] = field(default_factory=dict)

    def wants_visual_mass(self, layer_idx: int) -> bool:
        return self.routed and self.any_visual and layer_idx in self.learner_layers

    def plain_keys(self) -> tuple[LearnerKeys | None, LearnerKeys]:
        """(visual, text) as `WingsLayer.forward` takes them (without a KV cache: the keys are this step's)."""
        text = LearnerKeys(self.key_input, *self.rotary, self.text_key_mask, self.text_has_key)
        if not self.any_visual and not self.run_visual:
            return None, text
        visual_inputs = self.visual_key_input
        if visual_inputs is None:  # no slot at all: an empty key set, every query without an admissible key
            visual_inputs = self.key_input[:, :0]
        cos, sin = (
            self.visual_rotary if self.visual_rotary is not None else (self.rotary[0][:, :0], self.rotary[1][:, :0])
        )
        return LearnerKeys(visual_inputs, cos, sin, self.visual_key_mask, self.has_visual_key), text


def additive_mask(key_mask: torch.Tensor, has_key: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L, T) bool -> (B, 1, L, T) additive mask (0 or -inf) for attention, made once per forward: a boolean
    mask would be converted, and kept for the backward, by every layer's attention call. A query without any
    admissible key admits every key instead (no NaN); the WINGS layer zeroes its output."""
    allowed = (key_mask | ~has_key.unsqueeze(-1)).unsqueeze(1)
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


def build_learner_inputs(
    inputs_embeds: torch.Tensor,
    is_visual: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    past_length: int,
    *,
    rotary: torch.nn.Module,
    marks: KeyMarksLayer | None,
    run_visual: bool,
    learner_layers: Collection[int],
    routed: bool,
) -> LearnerInputs:
    """Masks, gathered visual keys and rotary tables shared by every WINGS layer of this forward.

    `marks`: the cache's record of which keys are visual and where the visual slots sit (None without a cache);
    `run_visual`: build the visual learner's inputs even when no image is there (one empty slot).
    """
    device, length = is_visual.device, is_visual.shape[1]
    key_is_visual = marks.add_keys(is_visual) if marks is not None else is_visual
    total = key_is_visual.shape[1]
    key_valid = attention_mask[:, -total:].bool()
    query_index = torch.arange(past_length, past_length + length, device=device)
    plain_cos, plain_sin = rotary(inputs_embeds, position_ids)  # (B, L, D)
    cos, sin = rotary_tables(plain_cos, plain_sin)  # (B, L, 1, D)
    any_visual = bool(key_is_visual.any())

    # Textual learner: every key, text ones admissible. No mask at all when that is plainly causal.
    text_key_mask = text_has_key = None
    plainly_causal = past_length == 0 or length == 1
    if any_visual or not plainly_causal or not bool(key_valid.all()):
        causal = torch.arange(total, device=device)[None, :] <= query_index[:, None]  # (L, T)
        text_key_mask = causal[None] & key_valid[:, None, :] & ~key_is_visual[:, None, :]
        text_has_key = text_key_mask.any(dim=-1)
        text_key_mask = additive_mask(text_key_mask, text_has_key, inputs_embeds.dtype)

    # Visual learner: this step's visual tokens gathered into slots (one empty slot when it must run anyway).
    counts = is_visual.sum(dim=1)
    slots = max(int(counts.max()) if length else 0, 1 if run_visual else 0)
    visual: dict[str, Any] = {}
    if any_visual or run_visual:
        order = torch.argsort((~is_visual).to(torch.int8), dim=1, stable=True)[:, :slots]  # visual first
        slot_valid = torch.arange(slots, device=device)[None, :] < counts[:, None]
        slot_position = torch.where(slot_valid, order + past_length, -1)  # absolute index, -1: empty
        if marks is not None:
            slot_position = marks.add_visual_slots(slot_position)
        visual_key_mask = (slot_position[:, None, :] >= 0) & (slot_position[:, None, :] <= query_index[None, :, None])
        has_visual_key = visual_key_mask.any(dim=-1)
        visual["visual_key_mask"] = additive_mask(visual_key_mask, has_visual_key, inputs_embeds.dtype)
        visual["has_visual_key"] = has_visual_key
        if slots:
            gather = order[..., None]

            def at_slots(table: torch.Tensor) -> torch.Tensor:  # (B, L, ...) -> (B, slots, ...)
                return table.gather(
                    1, gather.view(*gather.shape, *[1] * (table.dim() - 3)).expand(-1, -1, *table.shape[2:])
                )

            visual.update(
                visual_key_input=at_slots(inputs_embeds),
                visual_cos=at_slots(cos),
                visual_sin=at_slots(sin),
                visual_rotary=(at_slots(plain_cos), at_slots(plain_sin)),
            )
    return LearnerInputs(
        key_input=inputs_embeds,
        key_is_visual=key_is_visual,
        text_key_mask=text_key_mask,
        text_has_key=text_has_key,
        visual_key_input=visual.pop("visual_key_input", None),
        visual_cos=visual.pop("visual_cos", None),
        visual_sin=visual.pop("visual_sin", None),
        visual_key_mask=visual.pop("visual_key_mask", None),
        has_visual_key=visual.pop("has_visual_key", None),
        any_visual=any_visual,
        run_visual=run_visual,
        cos=cos,
        sin=sin,
        rotary=(plain_cos, plain_sin),
        learner_layers=learner_layers,
        routed=routed,
        **visual,
    )
