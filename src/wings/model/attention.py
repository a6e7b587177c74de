"""The router's input, read from the LLM's own attention kernel without materialising attention matrices.

The router needs, per query token i and head h, the attention mass on visual keys
`m[i, h] = sum_{j visual} A_h[i, j]`. Appending one value channel that is 1 on visual keys and 0 elsewhere
makes any attention kernel (SDPA, flash, eager) return exactly that sum in the extra output channel. We pad
queries and keys with zeros to the same width (scores unchanged, scaling passed explicitly) so kernels that
need equal head sizes, and a multiple of 8, accept it.

The wrapped kernels are registered with transformers' `AttentionInterface` under `wings_<backend>`; the LLM
of a WINGS model runs with that name and everything else in transformers stays as it is. The learners' per-forward
context reaches the kernel as the keyword argument `wings_context` (`wiring.py`); the kernel records each learner
layer's visual mass in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

PREFIX = "wings_"
CONTEXT_KEY = "wings_context"  # the keyword argument that carries the learners' per-forward context
# Extra channels appended to q/k/v: one carries the visual indicator, the rest keep the width a multiple of 8.
EXTRA_CHANNELS = 8
SUPPORTED_BACKENDS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")
FLASH_MAX_HEAD_DIM = 256  # FlashAttention 2 and 3 take head sizes up to 256


def eager_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Llama-family eager attention (grouped KV, fp32 softmax); output (B, L, H, D)."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


class _BackendNamed:
    """`module` (or its config) as seen through `__getattr__`, except for the attention backend's name."""

    def __init__(self, wrapped: Any, backend: str):
        self._wrapped = wrapped
        self._attn_implementation = backend
        if hasattr(wrapped, "config"):
            self.config = _BackendNamed(wrapped.config, backend)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


def flash_kernel(backend: str) -> Callable:
    """transformers' flash kernel for `backend`, called with the plain backend name.

    The kernel loads the flash package by `module.config._attn_implementation`, which in a WINGS model (or in the
    attention-shift analysis) is the wrapping name (`wings_flash_attention_2`): transformers would look for a hub
    kernel of that name and fail. The module is handed on with only that name changed.
    """
    kernel = ALL_ATTENTION_FUNCTIONS[backend]

    def flash_attention(module: torch.nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return kernel(_BackendNamed(module, backend), *args, **kwargs)

    flash_attention.max_head_dim = FLASH_MAX_HEAD_DIM
    return flash_attention


def base_attention_function(backend: str) -> Callable:
    """The kernel that `backend` names in transformers (eager is ours: the LLMs keep theirs module-private; flash
    kernels are told their own name, see `flash_kernel`)."""
    if backend == "eager":
        return eager_attention
    if backend.startswith("flash_attention"):
        return flash_kernel(backend)
    return ALL_ATTENTION_FUNCTIONS[backend]


def attend_with_indicators(
    base: Callable,
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    indicators: torch.Tensor,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Run `base` with up to EXTRA_CHANNELS indicator value channels appended to every key.

    `indicators` (B, T, C) marks key sets; the third result (B, L, H, C) is, per query and head, the attention
    mass on each set: exactly what the kernel computes, with no L x T matrix kept.
    """
    head_dim, channels = value.shape[-1], indicators.shape[-1]
    kwargs.setdefault("scaling", module.scaling)  # zero padding must not change the 1/sqrt(d) scale
    batch, kv_heads, keys, _ = value.shape
    marks = indicators[:, None].to(value.dtype).expand(batch, kv_heads, keys, channels)
    padding = value.new_zeros(batch, kv_heads, keys, EXTRA_CHANNELS - channels)
    if head_dim + EXTRA_CHANNELS > getattr(base, "max_head_dim", head_dim + EXTRA_CHANNELS):
        # No room for the extra channels (head size 256 under flash): a second call of the same kernel, whose
        # values are the indicators alone (the kernel pads them to the head size), gives the same masses.
        output, weights = base(module, query, key, value, attention_mask, **kwargs)
        mass, _ = base(module, query, key, torch.cat([marks, padding], -1), attention_mask, **kwargs)
        return output, weights, mass[..., :channels].float()
    padded_value = torch.cat([value, marks, padding], -1)
    padded_query, padded_key = F.pad(query, (0, EXTRA_CHANNELS)), F.pad(key, (0, EXTRA_CHANNELS))
    output, weights = base(module, padded_query, padded_key, padded_value, attention_mask, **kwargs)
    return output[..., :head_dim], weights, output[..., head_dim : head_dim + channels].float()


def single_query_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    indicators: torch.Tensor,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention of one new token per sample (a decoding step) with its visual mass, as `attend_with_indicators`
    returns them. One query's weights are a (H, T) row, not an L x T matrix, so here they are computed plainly:
    the indicator channel would copy the whole cached keys and values into wider ones at every step.

    `attention_mask` as the sdpa (boolean, True = attend) or eager (additive) backend receives it, or None.
    """
    batch, heads, _, head_dim = query.shape
    kv_heads = key.shape[1]
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, head_dim)  # grouped-query heads share their keys
    scores = torch.matmul(grouped, key.transpose(-1, -2)) * (module.scaling if scaling is None else scaling)
    if attention_mask is not None:  # (B, 1, 1, T): the same row for every head
        mask = attention_mask[..., -key.shape[-2] :]
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).reshape(batch, 1, heads, head_dim)  # (B, 1, H, D), as the kernels give
    mass = torch.matmul(weights, indicators[:, None].to(weights.dtype)).reshape(batch, 1, heads, -1)
    return output, weights.reshape(batch, heads, 1, -1), mass.float()


def make_visual_mass_attention(backend: str) -> Callable:
    """Wrap `backend` so that WINGS layers also get the per-head attention mass on visual keys."""
    base = base_attention_function(backend)
    # Decoding steps skip the indicator channel where the backend's mask format is known (sdpa, eager).
    single_query = single_query_attention if backend in ("sdpa", "eager") else None

    def attention_with_visual_mass(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        context = kwargs.pop(CONTEXT_KEY, None)
        if context is None or not context.wants_visual_mass(module.layer_idx):
            return base(module, query, key, value, attention_mask, **kwargs)
        indicators = context.key_is_visual[..., None]
        if single_query is not None and query.shape[2] == 1:
            output, weights, mass = single_query(module, query, key, value, attention_mask, indicators, **kwargs)
            weights = weights if backend == "eager" else None  # what the wrapped backend would return
        else:
            output, weights, mass = attend_with_indicators(
                base, module, query, key, value, attention_mask, indicators, **kwargs
            )
        context.visual_mass[module.layer_idx] = mass[..., 0]  # (B, L, H)
        return output, weights

    return attention_with_visual_mass


def register_wings_attention() -> None:
    """Register `wings_<backend>` attention and mask functions with transformers (idempotent)."""
    for backend in SUPPORTED_BACKENDS:
        name = PREFIX + backend
        if name in ALL_ATTENTION_FUNCTIONS.valid_keys():
            continue
        if backend != "eager" and backend not in ALL_ATTENTION_FUNCTIONS.valid_keys():
            continue
        AttentionInterface.register(name, make_visual_mass_attention(backend))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[backend])


def wings_attention_name(backend: str | None) -> str:
    """`sdpa` -> `wings_sdpa`; raises for backends the router cannot read yet."""
    backend = (backend or "sdpa").removeprefix(PREFIX)
    if backend not in SUPPORTED_BACKENDS:
        raise ValueError(
            f"attn_implementation={backend!r} is not supported by WINGS' router; use one of {SUPPORTED_BACKENDS}."
        )
    return PREFIX + backend
