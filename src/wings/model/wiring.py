"""How the learners attach to an unmodified HF LLM.

Each chosen decoder layer's `self_attn` gets a forward hook (`LearnerHook`): the attention receives the normalised
input x and returns a, and the hook returns `a + learners(x)`, so that layer computes `h + a + learners(x)`. The
per-forward context (`learner_inputs.LearnerInputs`) travels down the LLM as the keyword argument `wings_context`:
transformers hands it from the decoder layer to the attention module (whose hook reads it) and on to the attention
function (`attention.py`, which records the router's input in it). Nothing is stored on the LLM's modules.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache

from . import distributed, fused
from .attention import CONTEXT_KEY, wings_attention_name
from .learner_cache import KINDS, add_learner_layers, learner_keys
from .learner_inputs import LearnerInputs, build_learner_inputs
from .learners import WingsLayer


class LearnerHook:
    """Forward hook on decoder layer `layer_index`'s `self_attn`: returns (a + learners(x), attention weights)."""

    def __init__(self, layer: WingsLayer, layer_index: int, position: int):
        self.layer = layer
        self.layer_index = layer_index
        self.position = position  # among the learner layers (the learners' caches are in that order)

    def __repr__(self) -> str:
        return f"LearnerHook(layer {self.layer_index})"

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: tuple) -> tuple | None:
        context = kwargs.get(CONTEXT_KEY)
        if context is None:  # the LLM called on its own behaves as the base LLM
            return None
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        attention_output, visual_mass = output[0], context.visual_mass.get(self.layer_index)
        if context.plain:
            visual, text = context.plain_keys()
            out = self.layer(x, attention_output, *context.rotary, visual, text, visual_mass, context.has_visual_key)
        else:
            keys = {kind: source.layer(self.position) for kind, source in context.learner_keys.items()}
            masks = {
                "text": (context.text_key_mask, context.text_has_key),
                "visual": (context.visual_key_mask, context.has_visual_key),
            }
            out = fused.wings_layer(self.layer, x, attention_output, keys, context.cos, context.sin, masks, visual_mass)
        return (out, *output[1:])


def attach_learners(llm: nn.Module, wings_layers: nn.ModuleDict) -> None:
    """Hook each learner layer's attention (`wings_layers` keys are decoder layer indices, in order)."""
    use_wings_attention(llm)
    for position, (index, layer) in enumerate(wings_layers.items()):
        attention = llm.model.layers[int(index)].self_attn
        attention.register_forward_hook(LearnerHook(layer, int(index), position), with_kwargs=True)


def use_wings_attention(llm: nn.Module) -> None:
    """Run the LLM with `wings_<backend>` (its kernel also returns the router's input); re-applied whenever
    someone switched the backend since."""
    config = llm.config
    if not str(config._attn_implementation).startswith("wings_"):
        config._attn_implementation_internal = wings_attention_name(config._attn_implementation)


def learner_rotary(llm: nn.Module) -> nn.Module | None:
    """The learners use head size d/H; when the LLM's head size differs (e.g. Qwen3) they get their own rotary
    embedding (None: the LLM's serves)."""
    text = llm.config
    learner_head_dim = text.hidden_size // text.num_attention_heads
    if (getattr(text, "head_dim", None) or learner_head_dim) == learner_head_dim:
        return None
    rope_config = copy.deepcopy(text)
    rope_config.head_dim = learner_head_dim
    return type(llm.model.rotary_emb)(config=rope_config)


def learner_context(
    model: nn.Module,
    inputs_embeds: torch.Tensor,
    is_visual: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Cache | None,
    past_length: int,
) -> LearnerInputs:
    """`model`'s context for this forward, with every learner layer's keys and values (this step's and the cache's,
    whose learner layers are added after the LLM's own on first use)."""
    if model.learner_path not in ("fused", "plain"):
        raise ValueError(f"learner_path={model.learner_path!r} is not one of 'fused', 'plain'.")
    if model.learner_path == "plain" and cache is not None:
        raise ValueError("learner_path='plain' runs without a KV cache: pass use_cache=False.")
    use_wings_attention(model.language_model)  # again, in case the backend was switched since
    distributed.register_zero3_external_parameters(model)
    if cache is not None:
        add_learner_layers(cache, model._cache_index(KINDS[0]), model.learner_cache, inputs_embeds.device)
    context = build_learner_inputs(
        inputs_embeds,
        is_visual,
        attention_mask,
        position_ids,
        past_length,
        rotary=model.learner_rotary or model.language_model.model.rotary_emb,
        marks=cache.layers[model._cache_index("marks")] if cache is not None else None,
        run_visual=distributed.needs_same_modules_on_every_rank(model),
        learner_layers=[int(index) for index in model.wings_layers],
        routed=model.config.learners == "wings",
    )
    context.plain = model.learner_path == "plain"
    if not context.plain:
        layers = list(model.wings_layers.values())
        context.learner_keys = learner_keys(context, layers, cache, model._cache_index("text"))
    return context


def forward_context(kwargs: dict[str, Any], context: Any) -> dict[str, Any]:
    """The LLM's keyword arguments with the learners' context added (None: the LLM runs as it is)."""
    return kwargs if context is None else {**kwargs, CONTEXT_KEY: context}
