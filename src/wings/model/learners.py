"""The WINGS layer: low-rank residual attention learners and the router (WINGS.md, "Model").

In a WINGS layer the attention block's output becomes
    a + w_v * L_v(x, X_v) + w_t * L_t(x, X_t)        ("wings")
    a + L_v(x, X_v)                                  ("visual": align stage, ablation)
where x is the attention's own normalised input, X_v the projector's visual features and X_t the LLM's input
token embeddings at text positions. Both learners see every key of the sequence through a mask: visual keys
for L_v, text keys for L_t, causal by true position, padding removed. One mask per forward serves all layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the Llama convention; x (B, H, L, D), cos/sin (B, L, D)."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


class LowRankResidualAttention(nn.Module):
    """LoRRA: multi-head attention whose q/k/v are the inputs plus low-rank residuals; output `O A_o B_o`."""

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

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def keys_and_values(
        self, key_input: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated keys and values (B, H, L, D) of new tokens; cached across generation steps."""
        keys = apply_rotary(self.split_heads(self.key(key_input)), cos, sin)
        return keys, self.split_heads(self.value(key_input))

    def forward(
        self,
        query_input: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        key_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Attend from `query_input` (B, L, d) to `keys`/`values` (B, H, T, D) where `key_mask` (B, L, T) allows.

        `key_mask=None` means plainly causal over the same L tokens (the kernel then skips the upper half).
        A query with no admissible key outputs exactly 0.
        """
        queries = apply_rotary(self.split_heads(self.query(query_input)), cos, sin)
        keys, values = keys.to(queries.dtype), values.to(queries.dtype)
        if key_mask is None:
            attended = F.scaled_dot_product_attention(queries, keys, values, is_causal=True)
            return self.output(attended.transpose(1, 2).reshape(query_input.shape))
        has_key = key_mask.any(dim=-1)  # (B, L)
        # Rows without any key attend to everything (no NaN) and are zeroed below.
        safe_mask = (key_mask | ~has_key.unsqueeze(-1)).unsqueeze(1)
        attended = F.scaled_dot_product_attention(queries, keys, values, safe_mask)
        attended = attended.transpose(1, 2).reshape(query_input.shape) * has_key.unsqueeze(-1).to(queries.dtype)
        return self.output(attended)


class Router(nn.Module):
    """Per token, mixes the learners from the main attention's per-head mass on visual tokens: softmax(W m + b)."""

    def __init__(self, num_heads: int):
        super().__init__()
        self.proj = nn.Linear(num_heads, 2)
        self.proj.wings_zero_init = True  # equal weights until trained
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

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
    visual keys, gathered per sample. Masks are (B, L, keys) for the L new queries; keys cover the cache too.
    """

    key_input: torch.Tensor  # (B, L, d): the LLM's input embeddings of this step (X_t at text positions)
    key_is_visual: torch.Tensor  # (B, T) bool, every key so far (the router's indicator channel)
    text_key_mask: torch.Tensor | None  # (B, L, T) bool: text, valid, causal; None: plainly causal
    visual_key_input: torch.Tensor | None  # (B, N, d): this step's visual features X_v (N slots, padded)
    visual_cos: torch.Tensor | None  # rotary tables at those slots' positions
    visual_sin: torch.Tensor | None
    visual_key_mask: torch.Tensor | None  # (B, L, V) bool over every visual key so far: valid and causal
    has_visual_key: torch.Tensor | None  # (B, L) bool: some visual token at or before the query
    any_visual: bool  # False: the visual learner and the router are skipped (they would add exactly 0)
    run_visual: bool = False  # run them anyway (text-only training batch: every rank runs the same modules)
    cos: torch.Tensor | None = None  # rotary tables at this step's positions, learner head size
    sin: torch.Tensor | None = None
    learner_layers: frozenset[int] = frozenset()
    routed: bool = True
    visual_mass: dict[int, torch.Tensor] = field(default_factory=dict)

    def wants_visual_mass(self, layer_idx: int) -> bool:
        return self.routed and self.any_visual and layer_idx in self.learner_layers

    @property
    def uses_visual_learner(self) -> bool:
        return self.any_visual or self.run_visual


class WingsLayer(nn.Module):
    """The learners and router of one decoder layer."""

    def __init__(self, hidden_size: int, num_heads: int, rank: int, mode: str, init_std: float = 0.02):
        super().__init__()
        self.visual_learner = LowRankResidualAttention(hidden_size, num_heads, rank, init_std)
        self.textual_learner = (
            LowRankResidualAttention(hidden_size, num_heads, rank, init_std) if mode == "wings" else None
        )
        self.router = Router(num_heads) if mode == "wings" else None

    def learner_keys(self, inputs: LearnerInputs) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Keys/values of this step's tokens for each active learner (the visual one: visual slots only)."""
        keys = {}
        if inputs.visual_key_input is not None:
            keys["visual"] = self.visual_learner.keys_and_values(
                inputs.visual_key_input, inputs.visual_cos, inputs.visual_sin
            )
        if self.textual_learner is not None:
            keys["text"] = self.textual_learner.keys_and_values(inputs.key_input, inputs.cos, inputs.sin)
        return keys

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        keys: dict[str, tuple[torch.Tensor, torch.Tensor]],
        inputs: LearnerInputs,
        visual_mass: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """The sum the layer adds to the attention output (None when it is exactly zero)."""
        visual_out = None
        if "visual" in keys:
            visual_out = self.visual_learner(x, cos, sin, *keys["visual"], inputs.visual_key_mask)
        if self.router is None:  # "visual" mode: h' = h + a + L_v
            return visual_out
        text_out = self.textual_learner(x, cos, sin, *keys["text"], inputs.text_key_mask)
        if visual_out is None:  # no visual token anywhere: w_t = 1 for every token
            return text_out
        if visual_mass is None:  # no visual key anywhere: the mass is 0 (and w_v = 0 below)
            visual_mass = x.new_zeros(*x.shape[:2], self.router.proj.in_features, dtype=torch.float32)
        visual_weight, textual_weight = self.router(visual_mass, inputs.has_visual_key)
        return (visual_weight * visual_out + textual_weight * text_out).to(x.dtype)
