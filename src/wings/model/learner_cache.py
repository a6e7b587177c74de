"""The learners' keys and values: made from their inputs when a layer's attention needs them, and cached.

Every learner layer of one kind reads the same input X (the visual features X_v; the LLM's input embeddings
X_t), so layer n's keys and values are `rot(X + (X A_k) B_k)` and `X + (X A_v) B_v`: X is shared by all layers,
only the rank-r parts X A differ. The A projections of every layer run as one matmul per forward; the rest runs
in each layer (`LowRankKeys.layer`), inside its forward, so gradient checkpointing frees and recomputes a
layer's keys and values with the layer instead of keeping every layer's for the whole forward.

The cache keeps the learners' state after the LLM's own layers, one cache layer per kind, in one of two forms
(the form of a cache is fixed when its learner layers are made, `cache_layer`):
- full: every layer's rotated keys and values, (B, n, H, T, D): 2 n d numbers per token, nothing to recompute
  at a decoding step;
- compact: X with the rotary tables of its positions once, (B, 1, T, d + 2 D), and every layer's
  [X A_k | X A_v], (B, 1, T, 2 n r): d + 2 D + 2 n r numbers per token; each layer expands its keys and values
  at every step (about 2 T r d multiply-adds per layer and step; rotary comes after the expansion, so the low-rank
  part cannot be folded into the query).
"auto" (`WingsForConditionalGeneration.learner_cache`, the default) picks compact on CUDA, where long
conversations run out of memory and arithmetic is cheap, and full on a CPU, where the expansion costs more than
the decoding step itself (docs/gpu.md has the measurements). The compact form saves capacity, not memory
traffic: the expanded keys and values are written and read again at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .fused import apply_rotary, keys_and_values, stacked_weights
from .learners import LowRankResidualAttention

FORMS = ("auto", "full", "compact")
KINDS = ("text", "visual", "marks")  # learner cache layers, in order after the LLM's own
# text / visual: the learners' keys and values (or their inputs, compact); marks: which keys are visual and where
# the visual keys sit (`KeyMarksLayer`).


class AppendLayer(DynamicLayer):
    """Cache layer that appends in place into spare room (amortised: it copies the cache only when it grows).

    `DynamicLayer` concatenates, i.e. copies the whole layer at every generated token; the learners' layer holds
    every learner layer's state, so that copy would cost more than the learners' arithmetic. `keys` / `values`
    stay views of the first `length` entries, so beam reordering, selection and cropping work unchanged (a
    reordered copy becomes the next buffer). The room grows by a quarter (at least 64 entries) when it is full.
    """

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized or key_states.requires_grad or value_states.requires_grad:
            return super().update(key_states, value_states, *args, **kwargs)  # autograd forbids in-place writes
        length, new = self.get_seq_length(), key_states.shape[-2]
        self.keys = self._append(self.keys, key_states, length, new)
        self.values = self._append(self.values, value_states, length, new)
        return self.keys, self.values

    @staticmethod
    def _append(stored: torch.Tensor, new_states: torch.Tensor, length: int, new: int) -> torch.Tensor:
        room = getattr(stored, "_wings_buffer", None)
        fits = (
            room is not None
            and room.shape[-2] >= length + new
            and room.data_ptr() == stored.data_ptr()
            and room.shape[:-2] == new_states.shape[:-2]
            and stored.numel() > 0
        )
        if not fits:
            capacity = length + new + max((length + new) // 4, 64)
            room = new_states.new_empty(*new_states.shape[:-2], capacity, new_states.shape[-1])
            if length:
                room[..., :length, :].copy_(stored)
        room[..., length : length + new, :].copy_(new_states)
        view = room[..., : length + new, :]
        view._wings_buffer = room
        return view


class SlotLayer(DynamicLayer):
    """Cache layer of the visual learner (and of its key positions): one entry per visual token, not per token.

    Cropping the cache (assisted decoding) removes generated tokens, never visual ones: nothing to crop here.
    """

    def crop(self, tokens_to_remove: int) -> None:
        return None


class CompactLayer(AppendLayer):
    """The textual learners' cache in the compact form: X | cos | sin as keys, every layer's X A as values."""


class CompactSlotLayer(SlotLayer):
    """The visual learners' cache in the compact form (one entry per visual token)."""


class KeyMarksLayer(DynamicLayer):
    """Typed state beside the learners' keys: which cached keys are visual, `is_visual` (B, T) bool, and the absolute
    index of every cached visual key, `visual_positions` (B, V) long (-1: an empty slot of a shorter sample).

    Beam reordering, batch selection and repetition apply to both like to keys; cropping removes generated (text)
    tokens, so it shortens `is_visual` and leaves the visual positions as they are.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.is_visual: torch.Tensor | None = None
        self.visual_positions: torch.Tensor | None = None

    def add_keys(self, is_visual: torch.Tensor) -> torch.Tensor:
        """Record this step's keys (B, L) bool; returns every key's (B, T)."""
        self.is_visual = is_visual if self.is_visual is None else torch.cat([self.is_visual, is_visual], 1)
        self.is_initialized = True
        return self.is_visual

    def add_visual_slots(self, positions: torch.Tensor) -> torch.Tensor:
        """Record this step's visual slots (B, N) long; returns every cached visual key's position (B, V)."""
        if positions.shape[1]:
            stored = self.visual_positions
            self.visual_positions = positions if stored is None else torch.cat([stored, positions], 1)
        return self.visual_positions if self.visual_positions is not None else positions

    def _apply(self, change) -> None:  # the same batch operation on both records
        self.is_visual = None if self.is_visual is None else change(self.is_visual)
        self.visual_positions = None if self.visual_positions is None else change(self.visual_positions)

    def get_seq_length(self) -> int:
        return 0 if self.is_visual is None else self.is_visual.shape[1]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply(lambda t: t[indices])

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove < 0 and self.is_visual is not None:
            self.is_visual = self.is_visual[:, :tokens_to_remove]

    def offload(self) -> None:
        self._apply(lambda t: t.to("cpu", non_blocking=True))

    def prefetch(self) -> None:
        device = getattr(self, "device", None)
        if device is not None:
            self._apply(lambda t: t.to(device, non_blocking=True))

    def reset(self) -> None:
        self.is_visual = self.visual_positions = None
        self.is_initialized = False


def cache_layer(kind: str, form: str, device: torch.device) -> DynamicLayer:
    """A new learner cache layer of `kind` in `form` ("auto": compact on CUDA, full elsewhere)."""
    if form not in FORMS:
        raise ValueError(f"learner_cache={form!r} is not one of {FORMS}.")
    compact = form == "compact" or (form == "auto" and device.type == "cuda")
    if kind == "text":
        return CompactLayer() if compact else AppendLayer()
    if kind == "visual":
        return CompactSlotLayer() if compact else SlotLayer()
    marks = KeyMarksLayer()
    marks.device = device
    return marks


def add_learner_layers(cache: Cache, first_layer: int, form: str, device: torch.device) -> None:
    """Give `cache` its learner layers (one per kind, after the LLM's own at `first_layer`) if it has none yet."""
    while len(cache.layers) < first_layer + len(KINDS):
        cache.layers.append(cache_layer(KINDS[len(cache.layers) - first_layer], form, device))


@dataclass
class LowRankKeys:
    """Keys and values of every learner layer of one kind, held as X and the rank-r parts X A.

    `inputs` (B, T, d); `low` (B, T, 2 n r): [X A_k of every layer, X A_v of every layer]; `cos` / `sin` the
    rotary tables of the T keys' positions (B, T, 1, D), as `rotary_tables` gives them.
    """

    learners: list[LowRankResidualAttention]
    inputs: torch.Tensor
    low: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def project(
        cls, learners: list[LowRankResidualAttention], inputs: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> LowRankKeys:
        """The A projections of every layer's keys and values: one matmul."""
        residuals = [learner.key for learner in learners] + [learner.value for learner in learners]
        if torch.is_grad_enabled():  # (the kept stack is for generation; it would also stack every B here)
            down = torch.cat([residual.down.weight for residual in residuals])
        else:
            down = stacked_weights(residuals)[0]
        low = (inputs.reshape(-1, inputs.shape[-1]) @ down.t()).view(*inputs.shape[:2], -1)
        return cls(learners, inputs, low, cos, sin)

    def layer(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `position`'s rotated keys and values, each (B, H, T, D)."""
        learner, count = self.learners[position], len(self.learners)
        rank = learner.key.down.out_features
        flat = self.inputs.reshape(-1, self.inputs.shape[-1])
        low = self.low.reshape(-1, self.low.shape[-1])
        shape = (*self.inputs.shape[:2], learner.num_heads, -1)
        key_low = low[:, rank * position : rank * (position + 1)].to(flat.dtype)
        value_low = low[:, rank * (count + position) : rank * (count + position + 1)].to(flat.dtype)
        keys = torch.addmm(flat, key_low, learner.key.up.weight.t()).view(shape)
        values = torch.addmm(flat, value_low, learner.value.up.weight.t()).view(shape)
        return apply_rotary(keys, self.cos, self.sin).transpose(1, 2), values.transpose(1, 2)


@dataclass
class FullKeys:
    """Keys and values of every learner layer of one kind, already expanded: per layer (B, H, T, D)."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    def layer(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[position], self.values[position]


LearnerKeys = LowRankKeys | FullKeys


def compact_entries(keys: LowRankKeys) -> tuple[torch.Tensor, torch.Tensor]:
    """What the compact cache stores of `keys`: (B, 1, T, d + 2 D) inputs and rotary tables, (B, 1, T, 2 n r)."""
    dtype = keys.inputs.dtype
    tables = torch.cat([keys.inputs, keys.cos.squeeze(-2).to(dtype), keys.sin.squeeze(-2).to(dtype)], -1)
    return tables.unsqueeze(1), keys.low.unsqueeze(1)


def from_compact(learners: list[LowRankResidualAttention], tables: torch.Tensor, low: torch.Tensor) -> LowRankKeys:
    """`LowRankKeys` of a compact cache layer's contents."""
    dim = learners[0].key.down.in_features
    head_dim = (tables.shape[-1] - dim) // 2
    tables = tables[:, 0]
    cos, sin = tables[..., dim : dim + head_dim].unsqueeze(-2), tables[..., dim + head_dim :].unsqueeze(-2)
    return LowRankKeys(learners, tables[..., :dim], low[:, 0], cos, sin)


def full_entries(
    learners: list[LowRankResidualAttention], inputs: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the full cache stores: every layer's keys and values, (B, n, H, T, D) each."""
    if torch.is_grad_enabled():
        keys = LowRankKeys.project(learners, inputs, cos, sin)
        per_layer = [keys.layer(position) for position in range(len(learners))]
        return torch.stack([k for k, _ in per_layer], 1), torch.stack([v for _, v in per_layer], 1)
    # Without autograd all layers' B projections run as one batch, and the cache copies the views in place.
    projected_keys, values = keys_and_values(learners, inputs, cos, sin)
    return projected_keys.permute(1, 0, 3, 2, 4), values.permute(1, 0, 3, 2, 4)


def learner_keys(context: Any, layers: list[Any], cache: Cache | None, first_layer: int) -> dict[str, LearnerKeys]:
    """Every learner layer's keys and values per kind ("text", "visual"), the cache's included.

    `context`: this forward's `LearnerInputs` (its key inputs with their rotary tables); `layers`: the WingsLayers in
    order; `first_layer`: where the learners' layers start in `cache`.
    """
    learners = {"visual": [layer.visual_learner for layer in layers]}
    new = {"text": (context.key_input, context.cos, context.sin)}
    if context.routed:
        learners["text"] = [layer.textual_learner for layer in layers]
    if context.visual_key_input is not None:
        new["visual"] = (context.visual_key_input, context.visual_cos, context.visual_sin)
    result: dict[str, LearnerKeys] = {}
    for kind, kind_learners in learners.items():
        new_keys = new.get(kind)
        if cache is None:
            if new_keys is not None:
                result[kind] = LowRankKeys.project(kind_learners, *new_keys)
            continue
        index = first_layer + KINDS.index(kind)
        layer = cache.layers[index]
        compact = isinstance(layer, (CompactLayer, CompactSlotLayer))
        if new_keys is None:  # no new key of this kind: the cache's keys (if any)
            if layer.is_initialized and layer.get_seq_length():
                result[kind] = (
                    from_compact(kind_learners, layer.keys, layer.values)
                    if compact
                    else FullKeys(layer.keys.unbind(1), layer.values.unbind(1))
                )
            continue
        if compact:
            stored = cache.update(*compact_entries(LowRankKeys.project(kind_learners, *new_keys)), index)
            result[kind] = from_compact(kind_learners, *stored)
        else:
            stored_keys, stored_values = cache.update(*full_entries(kind_learners, *new_keys), index)
            result[kind] = FullKeys(stored_keys.unbind(1), stored_values.unbind(1))
    return result


def cache_bytes(cache: Cache, first_layer: int, spare_room: bool = True) -> tuple[int, int]:
    """(the LLM's, the learners') cache bytes: the memory the layers' tensors hold, with the learners' spare room
    for appending in place or (`spare_room=False`) without it."""

    def held(tensor: torch.Tensor | None) -> int:
        if tensor is None or not isinstance(tensor, torch.Tensor):
            return 0
        room = getattr(tensor, "_wings_buffer", tensor) if spare_room else tensor
        return room.numel() * room.element_size()

    totals = [0, 0]
    for index, layer in enumerate(cache.layers):
        totals[index >= first_layer] += held(getattr(layer, "keys", None)) + held(getattr(layer, "values", None))
    return totals[0], totals[1]
