"""The fast path of the WINGS layer: the maths of `learners.py`, reordered (tests/model/test_fused.py: equal outputs
and gradients).

What changes, and why:
- Keys and values read X_v and X_t, which are the same in every layer: the A projections of all layers run as one
  matmul per forward (`learner_cache.LowRankKeys`); when generating, the B projections run as one batch too
  (`keys_and_values`).
- Per layer, both learners' queries read x: one batched projection (`stacked_low_rank_residual`).
- The router mixes the learners in rank space, so one up-projection serves both:
      w_v (O_v A_ov) B_ov + w_t (O_t A_ot) B_ot = [w_v O_v A_ov, w_t O_t A_ot] [B_ov; B_ot]
  and the sum with the attention output is the same matmul (`addmm`).
- Rotary in three passes with a pre-signed sin table (`rotary_tables`, `apply_rotary`).
- Without autograd (generation) the stacked weights are kept until a weight changes (`stacked_weights`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .learners import LowRankResidual, LowRankResidualAttention, WingsLayer


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
    kept = residuals[0].__dict__.get("_stacked_weights")
    if kept is None or kept[0] != key:
        stacked = torch.cat(weights[0::2]), torch.stack([w.t() for w in weights[1::2]])
        kept = (key, *stacked, [w.detach() for w in weights])
        residuals[0].__dict__["_stacked_weights"] = kept  # a plain attribute, not a buffer: never saved
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


def attend(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Rotated queries (B, L, H, D) attend to keys/values (B, H, T, D); result (B, L, H D) before `A_o`.

    `mask` (B, 1, L, T) additive (0 / -inf); None means plainly causal over the same L tokens.
    """
    if queries.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        # bf16 attention's backward on a CPU is several times slower than float32's at the learners' sizes
        # (docs/results/demo.md, "bf16 on a CPU"): attend in float32, the projections around stay bf16.
        with torch.autocast("cpu", enabled=False):
            return attend(queries.float(), keys.float(), values.float(), None if mask is None else mask.float())
    queries = queries.transpose(1, 2)
    if keys.dtype != queries.dtype:  # a cache kept in another dtype
        keys, values = keys.to(queries.dtype), values.to(queries.dtype)
    if mask is None:
        attended = F.scaled_dot_product_attention(queries, keys, values, is_causal=queries.shape[2] > 1)
    else:
        attended = F.scaled_dot_product_attention(queries, keys, values, mask)
    return attended.transpose(1, 2).flatten(2)


def wings_layer(
    layer: WingsLayer,
    x: torch.Tensor,
    attention_output: torch.Tensor,
    keys: dict[str, tuple[torch.Tensor, torch.Tensor]],
    cos: torch.Tensor,
    sin: torch.Tensor,
    masks: dict[str, tuple[torch.Tensor | None, torch.Tensor | None]],
    visual_mass: torch.Tensor | None,
) -> torch.Tensor:
    """`WingsLayer.forward`, fast: `attention_output` plus what the learners add (returned as it is when they add
    exactly zero).

    `keys` holds this layer's rotated (keys, values) per active learner ("visual", "text"), each (B, H, T, D), made
    by `learner_cache`; `cos` / `sin` are the queries' rotary tables (`rotary_tables`); `masks` gives per learner
    its additive mask (B, 1, L, T) and whether each query has an admissible key (B, L) (None: plainly causal / every
    query has one). "visual" in `masks` also carries the router's "a visual key is at or before the token".
    """
    text_key_mask, text_has_key = masks["text"]
    visual_key_mask, has_visual_key = masks.get("visual", (None, None))
    learners = []  # (learner, its keys and values, additive mask, "has an admissible key" per token)
    if "visual" in keys:
        learners.append((layer.visual_learner, keys["visual"], visual_key_mask, has_visual_key))
    if layer.router is not None:
        learners.append((layer.textual_learner, keys["text"], text_key_mask, text_has_key))
    if not learners:
        return attention_output
    # Per-token output scale of each learner: router weight x "has an admissible key" (None: 1 everywhere).
    scales = [None if has_key is None else has_key.unsqueeze(-1) for *_, has_key in learners]
    if len(learners) == 2:  # both learners: the router mixes them
        if visual_mass is None:  # no visual key anywhere: the mass is 0 (and w_v = 0 below)
            visual_mass = x.new_zeros(*x.shape[:2], layer.router.proj.in_features, dtype=torch.float32)
        visual_weight, textual_weight = layer.router(visual_mass, has_visual_key)
        scales = [visual_weight * scales[0], textual_weight if scales[1] is None else textual_weight * scales[1]]

    # Queries of the learners from x (one batch), rotated; each learner attends to its own keys.
    queries = stacked_low_rank_residual([learner.query for learner, *_ in learners], x)
    queries = apply_rotary(queries.view(*queries.shape[:3], learners[0][0].num_heads, -1), cos, sin)
    low_rank = []  # w * O A_o per learner
    for (learner, (learner_keys, values), mask, _), query, scale in zip(learners, queries, scales):
        low = F.linear(attend(query, learner_keys, values, mask), learner.output.down.weight)
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
