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

from torch import nn

from . import fused
from .attention import CONTEXT_KEY, wings_attention_name
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


def forward_context(kwargs: dict[str, Any], context: Any) -> dict[str, Any]:
    """The LLM's keyword arguments with the learners' context added (None: the LLM runs as it is)."""
    return kwargs if context is None else {**kwargs, CONTEXT_KEY: context}
