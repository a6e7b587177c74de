"""Putting a WINGS model together from parts: the LLM check, the base LLM of a partial checkpoint, vision towers.

A checkpoint saved while the LLM was frozen leaves the LLM's weights out and names them in `config.llm_checkpoint`.
`from_pretrained_around_llm` loads that LLM first, as it loads alone, and builds the rest on the meta device around
it, filled from the checkpoint: no weight is initialised randomly or held twice (benchmarks/loading.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers.utils import logging as hf_logging

from .configuration_wings import WingsConfig
from .registry import resolve_llm


def check_llm_layout(llm: nn.Module) -> None:
    """Raise, before any computation, if `llm` is not a Llama-family causal LM that learners can attach to."""
    name = type(llm).__name__
    base = getattr(llm, "model", None)
    layers = getattr(base, "layers", None)
    problems = []
    if base is None or layers is None or len(layers) == 0:
        problems.append("no decoder layers at `model.layers`")
    else:
        attention = getattr(layers[0], "self_attn", None)
        if attention is None or not hasattr(attention, "layer_idx"):
            problems.append("decoder layers have no `self_attn` with a `layer_idx`")
        if getattr(layers[0], "input_layernorm", None) is None:
            problems.append("decoder layers have no pre-attention norm `input_layernorm`")
    if base is not None and getattr(base, "rotary_emb", None) is None:
        problems.append("no rotary embedding at `model.rotary_emb`")
    if getattr(llm, "lm_head", None) is None:
        problems.append("no `lm_head`")
    config = getattr(llm, "config", None)
    if config is not None and config.hidden_size % config.num_attention_heads:
        problems.append("hidden_size is not a multiple of num_attention_heads")
    if problems:
        raise ValueError(
            f"{name} is not supported: WINGS attaches to Llama-family decoder LLMs (Llama, Qwen2/2.5/3, Mistral, "
            f"SmolLM2) and this one has {'; '.join(problems)}. Load the LLM with AutoModelForCausalLM and check it "
            "follows that layout."
        )


class AsIs:
    """A module handed to `__init__` by `from_pretrained`, which deep-copies its keyword arguments (a passing second
    copy of a 7B LLM): this one goes through as it is."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __deepcopy__(self, memo: dict) -> AsIs:
        return self


def load_llm_checkpoint(
    source: str,
    expected: Any,
    dtype: torch.dtype | str | None,
    attn_implementation: str | None,
    wings_class: type[PreTrainedModel],
) -> PreTrainedModel:
    """The LLM a checkpoint names in `llm_checkpoint` (a registry name, an HF causal-LM directory or a WINGS
    checkpoint, read with `wings_class`), loaded by transformers; raises when it is not there or not the LLM
    `expected` describes."""
    path = resolve_llm(source)
    if not Path(path, "config.json").is_file():
        raise FileNotFoundError(
            f"this checkpoint reads its LLM weights from {source!r}, which is not available here "
            f"({path} has no config.json): make it available, or use a checkpoint made by `wings export`."
        )
    options = {"dtype": dtype, "attn_implementation": (attn_implementation or "sdpa").removeprefix("wings_")}
    if json.loads(Path(path, "config.json").read_text()).get("model_type") == WingsConfig.model_type:
        llm = wings_class.from_pretrained(path, **options).language_model
    else:
        llm = AutoModelForCausalLM.from_pretrained(path, **options)
    shape = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    if [getattr(llm.config, f) for f in shape] != [getattr(expected, f) for f in shape]:
        raise ValueError(
            f"llm_checkpoint {source!r} holds an LLM with {shape} = {[getattr(llm.config, f) for f in shape]}, but "
            f"this checkpoint was trained on {[getattr(expected, f) for f in shape]}: point llm_checkpoint in its "
            "config.json at the LLM it was trained on."
        )
    return llm


def from_pretrained_around_llm(
    load: Any, wings_class: type[PreTrainedModel], path: str, args: tuple, kwargs: dict[str, Any]
) -> PreTrainedModel:
    """`load(path, *args, **kwargs)` (transformers' `from_pretrained`) with `kwargs["language_model"]` put in as it is:
    its weights count as loaded, so the loader neither initialises them nor reports them missing."""
    llm = kwargs.pop("language_model")
    for parameter in llm.parameters():
        parameter._is_hf_initialized = True  # loaded: transformers must not initialise it again
    buffers = {name: buffer.clone() for name, buffer in llm.named_buffers()}  # (re-made empty by the loader)
    # The LLM's weights (and its tied head) are not "missing" from the checkpoint: they came with `llm`.
    wings_class._keys_to_ignore_on_load_missing = [r"^language_model\."]
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = load(path, *args, language_model=AsIs(llm), **kwargs)
    finally:
        wings_class._keys_to_ignore_on_load_missing = None
        hf_logging.set_verbosity(verbosity)
    with torch.no_grad():
        for name, buffer in model.language_model.named_buffers():
            buffer.copy_(buffers[name])
    return model


def build_around(
    wings_class: type[PreTrainedModel],
    llm: PreTrainedModel | str,
    vision: PreTrainedModel | str | None,
    dtype: torch.dtype | str | None,
    attn_implementation: str | None,
    wings_options: dict[str, Any],
) -> PreTrainedModel:
    """`WingsForConditionalGeneration.from_llm_and_vision`: a new WINGS model around an LLM and a tower (objects,
    hub ids or local paths); new modules are freshly initialised, the LLM and tower keep their weights."""
    base_llm = llm if isinstance(llm, str) else getattr(llm, "name_or_path", None) or None
    base_vision = vision if isinstance(vision, str) else getattr(vision, "name_or_path", None) or None
    load_kwargs = {"dtype": dtype} if dtype is not None else {}
    if isinstance(llm, str):
        llm = AutoModelForCausalLM.from_pretrained(llm, **load_kwargs)
    check_llm_layout(llm)
    if isinstance(vision, str):
        vision = AutoModel.from_pretrained(vision, **load_kwargs)
    if vision is not None:
        vision = as_vision_model(vision)
    # A composite config resets its sub-configs' attention backends: remember them and set them back.
    text_backend = (attn_implementation or llm.config._attn_implementation or "sdpa").removeprefix("wings_")
    vision_backend = (vision.config._attn_implementation if vision is not None else None) or "sdpa"
    config = WingsConfig(
        text_config=llm.config,
        vision_config=vision.config if vision is not None else None,
        base_llm=base_llm,
        base_vision=base_vision,
        **wings_options,
    )
    config._attn_implementation = {"": text_backend, "text_config": text_backend, "vision_config": vision_backend}
    model = wings_class(config, language_model=llm, vision_tower=vision)
    return model.to(dtype=llm.dtype)


def as_vision_model(vision: PreTrainedModel) -> PreTrainedModel:
    """A vision-only tower: a full CLIP/SigLIP model (text + vision) is reduced to its vision part."""
    vision_config = getattr(vision.config, "vision_config", None)
    if vision_config is None:
        return vision
    tower = AutoModel.from_config(vision_config)
    tower.vision_model.load_state_dict(vision.vision_model.state_dict())
    return tower.to(dtype=vision.dtype)
