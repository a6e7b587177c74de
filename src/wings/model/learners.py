"""The WINGS layer: low-rank residual attention learners and the router (WINGS.md, "Model").

In a WINGS layer the attention block's output becomes
    a + w_v * L_v(x, X_v) + w_t * L_t(x, X_t)        ("wings")
    a + L_v(x, X_v)                                  ("visual": align stage, ablation)
where x is the attention's own normalised input, X_v the projector's visual features and X_t the LLM's input
token embeddings at text positions. Both learners see every key of the sequence through a mask: visual keys
for L_v, text keys for L_t, causal by true position, padding removed. One mask per forward serves all layers.

Keys and values come from X_v and X_t, which are the same for every layer: the A projections of all layers run
as one matmul, each layer expands its own keys and values (`learner_cache.py`, which also caches them). Per layer,
the two
learners' queries share x and are computed together; their outputs meet the router's weights in rank space:
    w_v * (O_v A_ov) B_ov + w_t * (O_t A_ot) B_ot = [w_v * O_v A_ov, w_t * O_t A_ot] [B_ov; B_ot]
so one up-projection serves both. The maths is the paper's; only the order of the operations changes.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class LowRankResidual(nn.Module):
    """`x + x A B` (or `x A B` alone when `residual=False`), with A ~ trunc-normal and B = 0."""

    def __init__(self, hidden_size: int, rank: int, residual: bool = True, init_std: float = 0.02):
        super().__init__()
        self.down = nn.Linear(hidden_size, rank, bias=False)  # A
        self.up = nn.Linear(rank, hidden_size, bias=False)  # B
        self.residual = residual
        # Read by WingsPreTrainedModel._init_weights, which initialises leaf modules one by one.
        self.down.wings_init_std = init_std
        self.up.wings_zero_init = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.down.wings_init_std
        nn.init.trunc_normal_(self.down.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low_rank = self.up(self.down(x))
        return x + low_rank if self.residual else low_rank


def stacked_low_rank_residual(residuals: list[LowRankResidual], x: torch.Tensor) -> torch.Tensor:
    """`x + x A_i B_i` for several residuals that read the same x: (n, *x.shape), in two matmuls (for few tokens:
    the batched B projection writes one (n, ...) tensor, which costs memory traffic when x is long)."""
    if len(residuals) == 1:
        flat = x.reshape(-1, x.shape[-1])
        return torch.addmm(flat, F.linear(flat, residuals[0].down.weight), residuals[0].up.weight.t()).view(1, *x.shape)
    rank = residuals[0].down.out_features
    down, up = stacked_weights(residuals)
    low = (x.reshape(-1, x.shape[-1]) @ down.t()).view(-1, len(residuals), rank).transpose(0, 1)  # (n, B L, r)
    return torch.bmm(low, up).view(len(residuals), *x.shape) + x


def stacked_weights(residuals: list[LowRankResidual]) -> tuple[torch.Tensor, torch.Tensor]:
    """All A as one (n r, d) matrix and all B as one (n, r, d) batch. Without autograd (generation) the stack is
    kept until a weight changes, so that a decoding step does not copy every layer's weights again."""
    # Read through the modules' dicts: nn.Module attribute lookup would cost more than a decoding step's matmul.
    modules = [m for residual in residuals for m in (residual._modules["down"], residual._modules["up"])]
    weights = [m._parameters["weight"] for m in modules]
    if torch.is_grad_enabled() and any(w.requires_grad for w in weights):
        return torch.cat(weights[0::2]), torch.stack([w.t() for w in weights[1::2]])
    # Any change restacks: a new parameter (id), new storage (data_ptr: after .to(), a load), an in-place update
    # (_version). The kept entry holds the weights it was made from, so their storage cannot be freed and its
    # address reused by a new weight while the entry lives.
    key = [(id(w), w.data_ptr(), w._version) for w in weights]
    kept = getattr(residuals[0], "_stacked_weights", None)
    if kept is None or kept[0] != key:
        stacked = torch.cat(weights[0::2]), torch.stack([w.t() for w in weights[1::2]])
        kept = (key, *stacked, [w.detach() for w in weights])
        object.__setattr__(residuals[0], "_stacked_weights", kept)  # a plain attribute, not a buffer
    return kept[1], kept[2]


def rotary_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The LLM's rotary cos/sin (B, L, D) as `apply_rotary` wants them: (B, L, 1, D), broadcast over heads, and
    sin with its first half negated, so that rotate_half(x) * sin = roll(x, D/2) * signed sin."""
    first, second = sin.chunk(2, dim=-1)
    return cos.unsqueeze(-2), torch.cat((-first, second), dim=-1).unsqueeze(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the Llama convention on (..., B, L, H, D), tables from `rotary_tables`.

    The same numbers as `x * cos + rotate_half(x) * sin`, in three passes instead of six; and rotating before the
    heads move to dim -3 keeps the broadcast over heads contiguous (several times faster on a CPU).
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), signed_sin)


def keys_and_values(
    learners: list[LowRankResidualAttention], key_input: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated keys and values of `key_input` (B, T, d) for every learner, as two (n, B, T, H, D) tensors, without
    autograd (the full learner cache); cos/sin from `rotary_tables`. Every layer's learners of one kind read the
    same input: one matmul gives all their A projections, one batched matmul all their B projections.
    """
    residuals = [learner.key for learner in learners] + [learner.value for learner in learners]
    count, shape = len(learners), (*key_input.shape[:2], learners[0].num_heads, -1)
    projected = stacked_low_rank_residual(residuals, key_input).view(2 * count, *shape)
    return apply_rotary(projected[:count], cos, sin), projected[count:]


class LowRankResidualAttention(nn.Module):
    """LoRRA: multi-head attention whose q/k/v are the inputs plus low-rank residuals; output `O A_o B_o`.

    The projections are applied by `keys_and_values` (keys, values) and `WingsLayer` (queries, output).
    """

    def __init__(self, hidden_size: int, num_heads: int, rank: int, init_std: float = 0.02):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = LowRankResidual(hidden_size, rank, True, init_std)
        self.key = LowRankResidual(hidden_size, rank, True, init_std)
        self.value = LowRankResidual(hidden_size, rank, True, init_std)
        self.output = LowRankResidual(hidden_size, rank, False, init_std)

    def attend(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Rotated queries (B, L, H, D) attend to keys/values (B, H, T, D); result (B, L, H D) before `A_o`.

        `mask` (B, 1, L, T) additive (0 / -inf); None means plainly causal over the same L tokens. A query without
        any admissible key gets a mask that admits everything (no NaN): `WingsLayer` zeroes its output.
        """
        queries = queries.transpose(1, 2)
        if keys.dtype != queries.dtype:  # a cache kept in another dtype
            keys, values = keys.to(queries.dtype), values.to(queries.dtype)
        if mask is None:
            attended = F.scaled_dot_product_attention(queries, keys, values, is_causal=queries.shape[2] > 1)
        else:
            attended = F.scaled_dot_product_attention(queries, keys, values, mask)
        return attended.transpose(1, 2).flatten(2)


class Router(nn.Module):
    """Per token, mixes the learners from the main attention's per-head mass on visual tokens: softmax(W m + b).

    Starts with W = 0 and b = [logit(w0), 0]: every token that sees an image gets w_v = w0, w_t = 1 - w0.
    """

    def __init__(self, num_heads: int, init_visual_weight: float = 0.9):
        super().__init__()
        if not 0.0 < init_visual_weight < 1.0:
            raise ValueError(f"the router's initial visual weight must be in (0, 1), got {init_visual_weight}.")
        self.proj = nn.Linear(num_heads, 2)
        self.proj.wings_zero_init = True  # W = 0 until trained
        # Read by WingsPreTrainedModel._init_weights, which initialises leaf modules one by one.
        self.proj.wings_init_bias = (math.log(init_visual_weight / (1.0 - init_visual_weight)), 0.0)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.proj.weight)
        with torch.no_grad():
            self.proj.bias.copy_(torch.tensor(self.proj.wings_init_bias))

    def forward(self, visual_mass: torch.Tensor, has_visual_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w_v, w_t), each (B, L, 1); a token with no visual token before it gets w_v = 0, w_t = 1."""
        weights = torch.softmax(self.proj(visual_mass.to(self.proj.weight.dtype)).float(), dim=-1)
        has_visual = has_visual_key.unsqueeze(-1)
        visual_weight = torch.where(has_visual, weights[..., :1], 0.0)
        textual_weight = torch.where(has_visual, weights[..., 1:], 1.0)
        return visual_weight, textual_weight


@dataclass
class LearnerInputs:
    """What every WINGS layer of one forward pass shares (built once per forward by the model).

    The textual learner sees every key of the sequence (text keys admissible); the visual learner only the
    visual keys, gathered per sample. Masks are additive (B, 1, L, keys) for the L new queries; keys cover the
    cache too, and rows without an admissible key admit every key (their output is zeroed through `*_has_key`).
    """

    key_input: torch.Tensor  # (B, L, d): the LLM's input embeddings of this step (X_t at text positions)
    key_is_visual: torch.Tensor  # (B, T) bool, every key so far (the router's indicator channel)
    text_key_mask: torch.Tensor | None  # (B, 1, L, T) additive: text, valid, causal; None: plainly causal
    text_has_key: torch.Tensor | None  # (B, L) bool: some text key admissible; None: every query has one
    visual_key_input: torch.Tensor | None  # (B, N, d): this step's visual features X_v (N slots, padded)
    visual_cos: torch.Tensor | None  # rotary tables at those slots' positions (rotary_tables)
    visual_sin: torch.Tensor | None
    visual_key_mask: torch.Tensor | None  # (B, 1, L, V) additive, every visual key so far: valid and causal
    has_visual_key: torch.Tensor | None  # (B, L) bool: some visual token at or before the query
    any_visual: bool  # False: the visual learner and the router are skipped (they would add exactly 0)
    run_visual: bool = False  # run them anyway (text-only training batch: every rank runs the same modules)
    cos: torch.Tensor | None = None  # rotary tables at this step's positions, learner head size (rotary_tables)
    sin: torch.Tensor | None = None
    learner_layers: Collection[int] = frozenset()
    routed: bool = True
    visual_mass: dict[int, torch.Tensor] = field(default_factory=dict)
    # Per kind ("visual", "text"): every learner layer's keys and values, the cache's included; `.layer(n)` gives
    # layer n's, each (B, H, T, D) (learner_cache.LowRankKeys / FullKeys).
    learner_keys: dict[str, Any] = field(default_factory=dict)

    def wants_visual_mass(self, layer_idx: int) -> bool:
        return self.routed and self.any_visual and layer_idx in self.learner_layers


class WingsLayer(nn.Module):
    """The learners and router of one decoder layer."""

    def __init__(
        self, hidden_size: int, num_heads: int, rank: int, mode: str, init_std: float = 0.02,
        router_init_visual_weight: float = 0.9,
    ):
        super().__init__()
        self.visual_learner = LowRankResidualAttention(hidden_size, num_heads, rank, init_std)
        self.textual_learner = (
            LowRankResidualAttention(hidden_size, num_heads, rank, init_std) if mode == "wings" else None
        )
        self.router = Router(num_heads, router_init_visual_weight) if mode == "wings" else None

    def forward(
        self,
        x: torch.Tensor,
        attention_output: torch.Tensor,
        keys: dict[str, tuple[torch.Tensor, torch.Tensor]],
        inputs: LearnerInputs,
        visual_mass: torch.Tensor | None,
    ) -> torch.Tensor:
        """`attention_output` plus what the learners add (it is returned as it is when they add exactly zero).

        `keys` holds this layer's (keys, values) per active learner ("visual", "text"), each (B, H, T, D).
        """
        learners = []  # (learner, its keys and values, additive mask, "has an admissible key" per token)
        if "visual" in keys:
            learners.append((self.visual_learner, keys["visual"], inputs.visual_key_mask, inputs.has_visual_key))
        if self.router is not None:
            learners.append((self.textual_learner, keys["text"], inputs.text_key_mask, inputs.text_has_key))
        if not learners:
            return attention_output
        # Per-token output scale of each learner: router weight x "has an admissible key" (None: 1 everywhere).
        scales = [None if has_key is None else has_key.unsqueeze(-1) for *_, has_key in learners]
        if len(learners) == 2:  # both learners: the router mixes them
            if visual_mass is None:  # no visual key anywhere: the mass is 0 (and w_v = 0 below)
                visual_mass = x.new_zeros(*x.shape[:2], self.router.proj.in_features, dtype=torch.float32)
            visual_weight, textual_weight = self.router(visual_mass, inputs.has_visual_key)
            scales = [visual_weight * scales[0], textual_weight if scales[1] is None else textual_weight * scales[1]]

        # Queries of the learners from x (one batch), rotated; each learner attends to its own keys.
        queries = stacked_low_rank_residual([learner.query for learner, *_ in learners], x)
        queries = apply_rotary(queries.view(*queries.shape[:3], learners[0][0].num_heads, -1), inputs.cos, inputs.sin)
        low_rank = []  # w * O A_o per learner
        for (learner, (learner_keys, values), mask, _), query, scale in zip(learners, queries, scales):
            low = F.linear(learner.attend(query, learner_keys, values, mask), learner.output.down.weight)
            low_rank.append(low if scale is None else low * scale.to(low.dtype))
        if len(learners) == 1:
            low, up = low_rank[0], learners[0][0].output.up.weight.t()
        else:
            low = torch.cat(low_rank, dim=-1)
            up = stacked_weights([learner.output for learner, *_ in learners])[1].flatten(0, 1)  # [B_ov; B_ot]
        # a + [w_v O_v A_ov, w_t O_t A_ot] [B_ov; B_ot], the sum and the up-projection in one op
        flat = attention_output.reshape(-1, attention_output.shape[-1])
        return torch.addmm(flat, low.reshape(-1, low.shape[-1]).to(flat.dtype), up.to(flat.dtype)).view(
            attention_output.shape
        )
