"""Scoring rows that share a prefix from one forward of that prefix: the fast form of `multiple_choice`'s rows.

The choices of a question are rows that start with the same context. `prefix_shared_logits` runs each distinct
prefix once with a KV cache, copies the cache to the rows that share it, and runs only the rows' own tokens after
it, with each row's positions continuing from its prefix's true length (the padding slots of shorter prefixes are
masked). The logits are those of a full forward of each row (`multiple_choice.positions_logits`), up to float
rounding; tests/evaluation/test_multiple_choice.py checks the two agree. Models whose cache is not transformers'
plain `DynamicCache` (WINGS' learner caches, sliding windows) return None here and take the plain path.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def can_share_prefixes(model: Any) -> bool:
    """Whether the model's forward takes a KV cache and explicit positions (Hugging Face causal LMs do)."""
    config = getattr(model, "config", None)
    if getattr(model, "vision_tower", None) is not None or getattr(config, "model_type", "") == "wings":
        return False
    parameters = inspect.signature(model.forward).parameters
    return all(name in parameters for name in ("cache", "position_ids", "use_cache"))  # transformers 5 names


def prefix_shared_logits(
    model: Any, prefixes: list[tuple[int, ...]], suffixes: list[list[int]], prefix_of_row: list[int]
) -> torch.Tensor | None:
    """Logits (rows, longest suffix, vocabulary) at every suffix position of each row `prefixes[prefix_of_row[i]]
    + suffixes[i]`, or None when the model's cache cannot be shared (the caller then runs the rows whole)."""
    device = next(model.parameters()).device
    lengths = torch.tensor([len(p) for p in prefixes])
    width = int(lengths.max())
    prefix_ids = torch.zeros(len(prefixes), width, dtype=torch.long)
    prefix_mask = torch.zeros(len(prefixes), width, dtype=torch.long)
    for row, prefix in enumerate(prefixes):
        prefix_ids[row, : len(prefix)] = torch.tensor(prefix)
        prefix_mask[row, : len(prefix)] = 1
    cache = model(
        input_ids=prefix_ids.to(device), attention_mask=prefix_mask.to(device), use_cache=True, logits_to_keep=1
    ).cache
    if type(cache) is not DynamicCache or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    index = torch.tensor(prefix_of_row)
    cache.reorder_cache(index.to(device))  # each row gets its prefix's keys and values
    suffix_width = max(len(s) for s in suffixes)
    suffix_ids = torch.zeros(len(suffixes), suffix_width, dtype=torch.long)
    suffix_mask = torch.zeros(len(suffixes), suffix_width, dtype=torch.long)
    for row, suffix in enumerate(suffixes):
        suffix_ids[row, : len(suffix)] = torch.tensor(suffix)
        suffix_mask[row, : len(suffix)] = 1
    mask = torch.cat([prefix_mask[index], suffix_mask], dim=1)
    positions = lengths[index][:, None] + torch.arange(suffix_width)[None, :]  # continue from the true length
    return model(
        input_ids=suffix_ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        cache=cache,
        use_cache=True,
    ).logits
