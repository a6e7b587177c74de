"""`WingsForConditionalGeneration`: vision tower -> projector -> any Llama-family HF LLM, with WINGS learners.

The LLM is used as it is: the learners attach from outside, through a forward hook on each chosen decoder
layer's `self_attn` (which receives the attention's normalised input x and returns a), so that layer computes
`h + a + learners(x)`. The router's visual-attention mass comes from the LLM's own attention kernel (see
`attention.py`). The learners' keys and values live in the same HF `Cache` as the LLM's, as extra cache
layers, so beam search, cropping and batch selection treat them like every other layer.
"""

from __future__ import annotations

import copy
import json
import os
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    DynamicCache,
    GenerationMixin,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import logging as hf_logging

from .attention import register_wings_attention, wings_attention_name
from .configuration_wings import WingsConfig
from .feature_cache import DEFAULT_MAX_BYTES, VisionFeatureCache
from .learner_cache import KINDS, AppendLayer, SlotLayer, cache_layer, learner_keys  # noqa: F401 (re-exported)
from .learners import LearnerInputs, WingsLayer, rotary_tables

IGNORE_INDEX = -100
PARAMETER_GROUPS = ("vision_tower", "projector", "visual_learners", "textual_learners", "routers", "llm")


class WingsProjector(nn.Module):
    """Linear(d_v, d) -> GELU -> Linear(d, d): vision features to the LLM's embedding space."""

    def __init__(self, vision_hidden_size: int, text_hidden_size: int, activation: str = "gelu"):
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden_size, text_hidden_size)
        self.act = ACT2FN[activation]
        self.linear_2 = nn.Linear(text_hidden_size, text_hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(features)))


def additive_mask(key_mask: torch.Tensor, has_key: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L, T) bool -> (B, 1, L, T) additive mask (0 or -inf) for attention, made once per forward: a boolean
    mask would be converted, and kept for the backward, by every layer's attention call. A query without any
    admissible key admits every key instead (no NaN); the WINGS layer zeroes its output."""
    allowed = (key_mask | ~has_key.unsqueeze(-1)).unsqueeze(1)
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


class LearnerRuntime:
    """Per-forward state shared by the hooks (a plain object, so it is never a parameter or buffer)."""

    def __init__(self) -> None:
        self.context: LearnerInputs | None = None


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

    def __deepcopy__(self, memo: dict) -> "AsIs":
        return self


def load_llm_checkpoint(
    source: str, expected: Any, dtype: torch.dtype | str | None, attn_implementation: str | None
) -> PreTrainedModel:
    """The LLM a checkpoint names in `llm_checkpoint` (a registry name, an HF causal-LM directory or a WINGS
    checkpoint), loaded by transformers; raises when it is not there or not the LLM `expected` describes."""
    from .registry import resolve_llm  # the registry imports the GGUF tooling lazily

    path = resolve_llm(source)
    if not Path(path, "config.json").is_file():
        raise FileNotFoundError(
            f"this checkpoint reads its LLM weights from {source!r}, which is not available here "
            f"({path} has no config.json): make it available, or use a checkpoint made by `wings export`."
        )
    options = {"dtype": dtype, "attn_implementation": (attn_implementation or "sdpa").removeprefix("wings_")}
    if json.loads(Path(path, "config.json").read_text()).get("model_type") == WingsConfig.model_type:
        llm = WingsForConditionalGeneration.from_pretrained(path, **options).language_model
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


def as_vision_model(vision: PreTrainedModel) -> PreTrainedModel:
    """A vision-only tower: a full CLIP/SigLIP model (text + vision) is reduced to its vision part."""
    vision_config = getattr(vision.config, "vision_config", None)
    if vision_config is None:
        return vision
    tower = AutoModel.from_config(vision_config)
    tower.vision_model.load_state_dict(vision.vision_model.state_dict())
    return tower.to(dtype=vision.dtype)


class WingsPreTrainedModel(PreTrainedModel):
    config_class = WingsConfig
    config: WingsConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = False
    _can_compile_fullgraph = False

    def _init_weights(self, module: nn.Module) -> None:
        # Learner matrices carry their own rule (A ~ trunc-normal, B = 0, router W = 0); see learners.py.
        if getattr(module, "wings_zero_init", False):
            init.zeros_(module.weight)
            if module.bias is not None and getattr(module, "wings_init_bias", None) is not None:
                init.copy_(module.bias, torch.tensor(module.wings_init_bias, dtype=module.bias.dtype))
            elif module.bias is not None:
                init.zeros_(module.bias)
        elif (std := getattr(module, "wings_init_std", None)) is not None:
            init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        else:
            super()._init_weights(module)


class WingsForConditionalGeneration(WingsPreTrainedModel, GenerationMixin):
    """A multimodal LLM: vision tower, projector, the LLM, and the WINGS learners beside its attention.

    With `config.learners == "none"` it is the LLaVA-style baseline on the same code.
    """

    learner_cache = "auto"  # form of the learners' KV cache: auto, full or compact (learner_cache.py)

    def __init__(
        self,
        config: WingsConfig,
        language_model: PreTrainedModel | None = None,
        vision_tower: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        register_wings_attention()
        language_model = language_model.module if isinstance(language_model, AsIs) else language_model
        self.language_model = language_model or AutoModelForCausalLM.from_config(config.text_config)
        check_llm_layout(self.language_model)
        config.text_config = self.language_model.config
        text = config.text_config
        if config.vision_config is not None:
            self.vision_tower = vision_tower or AutoModel.from_config(config.vision_config)
            config.vision_config = self.vision_tower.config
            self.projector = WingsProjector(config.vision_feature_size, text.hidden_size, config.projector_hidden_act)
        else:
            self.vision_tower = self.projector = None
        self.wings_layers = nn.ModuleDict(
            {
                str(index): WingsLayer(
                    text.hidden_size, text.num_attention_heads, config.lorra_rank, config.learners,
                    config.lorra_init_std, config.router_init_visual_weight,
                )
                for index in config.learner_layers
            }
        )
        self.learner_rotary = self._build_learner_rotary()
        self._learner_position = {index: n for n, index in enumerate(config.learner_layers)}
        self._runtime = LearnerRuntime()
        self.vision_feature_cache: VisionFeatureCache | None = None  # enable_vision_feature_cache()
        self._attach_learners()
        self.post_init()

    # ----- construction -----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any):
        """`PreTrainedModel.from_pretrained`. A checkpoint that leaves the LLM's weights out (saved while the LLM was
        frozen) gets it from `config.llm_checkpoint`, loaded first as that LLM loads alone; the rest is built on
        the meta device around it and filled from the checkpoint: no weight is initialised randomly or held twice."""
        config = kwargs.get("config")
        if not isinstance(config, WingsConfig):
            config = WingsConfig.from_pretrained(pretrained_model_name_or_path)
        if config.llm_checkpoint and "language_model" not in kwargs:
            dtype = config.dtype if kwargs.get("dtype") in (None, "auto") else kwargs["dtype"]
            kwargs["language_model"] = load_llm_checkpoint(
                config.llm_checkpoint, config.text_config, dtype, kwargs.get("attn_implementation")
            )
        if "language_model" not in kwargs:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        llm = kwargs.pop("language_model")
        for parameter in llm.parameters():
            parameter._is_hf_initialized = True  # loaded: transformers must not initialise it again
        buffers = {name: buffer.clone() for name, buffer in llm.named_buffers()}  # (re-made empty by the loader)
        # The LLM's weights (and its tied head) are not "missing" from the checkpoint: they came with `llm`.
        cls._keys_to_ignore_on_load_missing = [r"^language_model\."]
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, language_model=AsIs(llm), **kwargs)
        finally:
            cls._keys_to_ignore_on_load_missing = None
            hf_logging.set_verbosity(verbosity)
        with torch.no_grad():
            for name, buffer in model.language_model.named_buffers():
                buffer.copy_(buffers[name])
        return model

    @classmethod
    def from_llm_and_vision(
        cls,
        llm: PreTrainedModel | str,
        vision: PreTrainedModel | str | None,
        *,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        **wings_options: Any,
    ) -> "WingsForConditionalGeneration":
        """Build a WINGS model around an existing LLM and vision tower (objects, hub ids or local paths).

        `wings_options` are `WingsConfig` fields (learners, wings_layers, lorra_rank, ...). New modules
        (projector, learners, routers) are freshly initialised; the LLM and tower keep their weights.
        """
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
        model = cls(config, language_model=llm, vision_tower=vision)
        return model.to(dtype=llm.dtype)

    def _build_learner_rotary(self) -> nn.Module | None:
        """The learners use head size d/H; when the LLM's head size differs (e.g. Qwen3) they get their own rope."""
        text = self.config.text_config
        learner_head_dim = text.hidden_size // text.num_attention_heads
        llm_head_dim = getattr(text, "head_dim", None) or learner_head_dim
        if not self.wings_layers or llm_head_dim == learner_head_dim:
            return None
        rope_config = copy.deepcopy(text)
        rope_config.head_dim = learner_head_dim
        return type(self.language_model.model.rotary_emb)(config=rope_config)

    def _attach_learners(self) -> None:
        """Hook each chosen decoder layer's attention and route it through the visual-mass kernel."""
        self._use_wings_attention()
        layers = self.language_model.model.layers
        for index in self.config.learner_layers:
            attention = layers[index].self_attn
            object.__setattr__(attention, "wings_runtime", self._runtime)  # read by the attention kernel
            attention.register_forward_hook(partial(self._add_learner_outputs, index), with_kwargs=True)

    def _use_wings_attention(self) -> None:
        """Run the LLM with `wings_<backend>`; re-applied if someone switched the backend since."""
        text = self.language_model.config
        if self.wings_layers and not str(text._attn_implementation).startswith("wings_"):
            text._attn_implementation_internal = wings_attention_name(text._attn_implementation)

    def set_attn_implementation(self, attn_implementation: str | dict, **kwargs: Any) -> None:
        super().set_attn_implementation(attn_implementation, **kwargs)
        self._use_wings_attention()

    def _activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        # The learners read per-forward state from outside the checkpointed layer: only non-reentrant replay sees it.
        kwargs = {**(activation_checkpointing_kwargs or {}), "use_reentrant": False}
        super()._activation_checkpointing_enable(kwargs, every_n_layers, offload)

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Named parameters by role (the training stages freeze, train and set learning rates by group)."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {name: [] for name in PARAMETER_GROUPS}
        for name, parameter in self.named_parameters():
            if name.startswith("wings_layers."):
                part = name.split(".")[2]
                group = {"visual_learner": "visual_learners", "textual_learner": "textual_learners"}.get(part, "routers")
            else:
                group = {"language_model": "llm"}.get(name.split(".")[0], name.split(".")[0])
            groups[group].append((name, parameter))
        return groups

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    # ----- images -----------------------------------------------------------------------------------------
    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(num_images, image_seq_length, hidden_size) visual features X_v."""
        frozen = not any(parameter.requires_grad for parameter in self.vision_tower.parameters())
        if self.vision_feature_cache is not None and frozen:
            features = self.vision_feature_cache.features(self.vision_tower, pixel_values, self.tower_features)
        else:
            features = self.tower_features(pixel_values)
        return self.projector(features.to(self.projector.linear_1.weight.dtype))

    def tower_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The vision tower's hidden state that feeds the projector, (num_images, image_seq_length, d_v)."""
        tower_dtype = next(self.vision_tower.parameters()).dtype
        outputs = self.vision_tower(pixel_values=pixel_values.to(tower_dtype), output_hidden_states=True)
        features = outputs.hidden_states[self.config.vision_feature_layer]
        if self.config.has_cls_token and self.config.vision_feature_select_strategy == "default":
            features = features[:, 1:]
        return features

    def enable_vision_feature_cache(self, max_bytes: int = DEFAULT_MAX_BYTES) -> VisionFeatureCache:
        """Reuse each image's tower features while the tower is frozen (training: a step never pays the tower)."""
        self.vision_feature_cache = VisionFeatureCache(max_bytes)
        return self.vision_feature_cache

    def _check_images(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """The visual-position mask; raises when images and placeholders do not match."""
        is_visual = input_ids == self.config.image_token_id
        num_images = 0 if pixel_values is None else pixel_values.shape[0]
        if self.vision_tower is None:
            if num_images or is_visual.any():
                raise ValueError(
                    "Images were given (pixel_values or image placeholders in input_ids) but this model has no "
                    "vision tower (vision_config is None): build it with a vision tower, or send text only."
                )
            return is_visual
        per_sample = is_visual.sum(dim=1).tolist()
        per_image = self.config.image_seq_length
        if any(count % per_image for count in per_sample):
            raise ValueError(
                f"Image placeholder tokens per sample {per_sample} are not multiples of {per_image} (the visual tokens "
                "of one image): expand each image placeholder with WingsProcessor, and never truncate inside an image."
            )
        expected = sum(per_sample) // per_image
        if expected != num_images:
            raise ValueError(
                f"The input_ids hold placeholders for {expected} image(s) but pixel_values holds {num_images}: "
                "give exactly one image per placeholder, in order of appearance."
            )
        return is_visual

    def _zero_weighted_image(self, reference: torch.Tensor) -> torch.Tensor:
        """0 * (vision tower and projector on a blank image), for text-only training batches.

        Under DDP or DeepSpeed ZeRO-3 every rank must run the same modules in the same order; a rank whose
        batch has no image would otherwise skip them and hang the others. (The visual learners and routers
        run on such batches too, with no admissible key: see `run_visual`.) The result is exactly 0.
        """
        size = self.config.vision_config.image_size
        blank = torch.zeros(1, 3, size, size, device=reference.device)
        return self.get_image_features(blank).sum().to(reference.dtype) * 0.0

    def _needs_same_modules_on_every_rank(self) -> bool:
        """Training with gradients: text-only batches still run the visual modules (with zero weight)."""
        return self.training and torch.is_grad_enabled() and self.vision_tower is not None

    # ----- the learners -----------------------------------------------------------------------------------
    def _learner_inputs(
        self,
        inputs_embeds: torch.Tensor,
        is_visual: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Cache | None,
        past_length: int,
    ) -> LearnerInputs:
        """Masks, gathered visual keys and rotary tables shared by every WINGS layer of this forward."""
        device, length = is_visual.device, is_visual.shape[1]
        key_is_visual = is_visual
        if cache is not None:
            indicator = is_visual[:, None, :, None].to(torch.float32)
            stored, _ = cache.update(indicator, indicator, self._cache_index("meta"))
            key_is_visual = stored[:, 0, :, 0].bool()
        total = key_is_visual.shape[1]
        key_valid = attention_mask[:, -total:].bool()
        query_index = torch.arange(past_length, past_length + length, device=device)
        rotary = self.learner_rotary or self.language_model.model.rotary_emb
        cos, sin = rotary_tables(*rotary(inputs_embeds, position_ids))  # (B, L, 1, D)
        any_visual, run_visual = bool(key_is_visual.any()), self._needs_same_modules_on_every_rank()

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
        visual = dict(visual_key_input=None, visual_cos=None, visual_sin=None, visual_key_mask=None,
                      has_visual_key=None)
        if any_visual or run_visual:
            order = torch.argsort((~is_visual).to(torch.int8), dim=1, stable=True)[:, :slots]  # visual first
            slot_valid = torch.arange(slots, device=device)[None, :] < counts[:, None]
            slot_position = torch.where(slot_valid, order + past_length, -1)  # absolute index, -1: empty
            if cache is not None:
                stored = slot_position[:, None, :, None].to(torch.float32)
                if slots:
                    cache.update(stored, stored, self._cache_index("visual_positions"))
                layer = cache.layers[self._cache_index("visual_positions")]
                slot_position = layer.keys[:, 0, :, 0].long() if layer.is_initialized else slot_position
            visual_key_mask = (slot_position[:, None, :] >= 0) & (slot_position[:, None, :] <= query_index[None, :, None])
            has_visual_key = visual_key_mask.any(dim=-1)
            gather = order[..., None]
            visual.update(
                visual_key_input=inputs_embeds.gather(1, gather.expand(-1, -1, inputs_embeds.shape[-1])) if slots else None,
                visual_cos=cos.gather(1, gather[..., None].expand(-1, -1, *cos.shape[2:])) if slots else None,
                visual_sin=sin.gather(1, gather[..., None].expand(-1, -1, *sin.shape[2:])) if slots else None,
                visual_key_mask=additive_mask(visual_key_mask, has_visual_key, inputs_embeds.dtype),
                has_visual_key=has_visual_key,
            )
        inputs = LearnerInputs(
            key_input=inputs_embeds,
            key_is_visual=key_is_visual,
            text_key_mask=text_key_mask,
            text_has_key=text_has_key,
            any_visual=any_visual,
            run_visual=run_visual,
            learner_layers=self._learner_position.keys(),
            routed=self.config.learners == "wings",
            cos=cos,
            sin=sin,
            **visual,
        )
        inputs.learner_keys = self._learner_keys(inputs, cache)
        return inputs

    def _learner_keys(self, inputs: LearnerInputs, cache: Cache | None) -> dict[str, Any]:
        """Every learner layer's keys and values per kind, this step's and the cache's (learner_cache.py)."""
        layers = list(self.wings_layers._modules.values())  # in learner_layers order
        learners = {"visual": [layer.visual_learner for layer in layers]}
        new = {"text": (inputs.key_input, inputs.cos, inputs.sin)}
        if self.config.learners == "wings":
            learners["text"] = [layer.textual_learner for layer in layers]
        if inputs.visual_key_input is not None:
            new["visual"] = (inputs.visual_key_input, inputs.visual_cos, inputs.visual_sin)
        return learner_keys(learners, new, cache, self._cache_index("text"))

    def _cache_index(self, kind: str) -> int:
        """Where learner state lives in the HF cache: after the LLM's own layers, one cache layer per kind."""
        return self.config.text_config.num_hidden_layers + KINDS.index(kind)

    def _register_zero3_external_parameters(self) -> None:
        """Under DeepSpeed ZeRO-3, tell DeepSpeed which learner weights are read outside their own module's forward
        (the learners' projections run as batched matmuls, not as module calls), so it gathers them in time:
        keys/values in this model's forward, queries/outputs in their WingsLayer's."""
        if getattr(self, "_zero3_registered", False):
            return
        first = next(iter(self.wings_layers.parameters()))
        if not hasattr(first, "ds_id"):  # not partitioned by ZeRO-3
            return
        from deepspeed.runtime.zero import register_external_parameter

        for layer in self.wings_layers.values():
            for learner in (layer.visual_learner, layer.textual_learner):
                if learner is None:
                    continue
                for owner, residuals in ((self, (learner.key, learner.value)), (layer, (learner.query, learner.output))):
                    for residual in residuals:
                        for parameter in residual.parameters():
                            register_external_parameter(owner, parameter)
        self._zero3_registered = True

    def _add_learner_outputs(
        self, layer_index: int, module: nn.Module, args: tuple, kwargs: dict, output: tuple
    ) -> tuple | None:
        """Forward hook on `self_attn`: returns (a + learners(x), attention weights)."""
        inputs = self._runtime.context
        if inputs is None:  # the LLM called on its own behaves as the base LLM
            return None
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        position = self._learner_position[layer_index]
        keys = {kind: source.layer(position) for kind, source in inputs.learner_keys.items()}  # expanded here
        layer = self.wings_layers._modules[str(layer_index)]  # (the dict itself: a decoding step counts microseconds)
        return (layer(x, output[0], keys, inputs, inputs.visual_mass.get(layer_index)), *output[1:])

    def _expand_inputs_for_generation(
        self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids: torch.LongTensor | None = None,
        **model_kwargs: Any,
    ) -> tuple[torch.LongTensor, dict[str, Any]]:
        """Beams / several sequences per prompt: repeat each sample's images with the sample, in order (the
        generic row-wise repeat would mix the images of a multi-image sample)."""
        pixel_values = model_kwargs.pop("pixel_values", None)
        if expand_size > 1 and pixel_values is not None and input_ids is not None and pixel_values.shape[0]:
            per_image = self.config.image_seq_length
            counts = ((input_ids == self.config.image_token_id).sum(dim=1) // per_image).tolist()
            chunks = torch.split(pixel_values, counts)
            pixel_values = torch.cat([chunk for chunk in chunks for _ in range(expand_size)])
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        if pixel_values is not None:
            model_kwargs["pixel_values"] = pixel_values
        return input_ids, model_kwargs

    # ----- forward ----------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: torch.Tensor | int | None = None,
        past_key_values: Cache | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Token ids with `image_token_id` at visual positions, `pixel_values` one image per placeholder run.

        With `labels` (unshifted, -100 where unsupervised) the loss is computed from the LM head at labelled
        positions only, and `logits` is None.
        """
        cache = cache if cache is not None else past_key_values
        kwargs.pop("image_token_mask", None)  # the processor's copy of what input_ids already say
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids or inputs_embeds.")
        if input_ids is not None:
            is_visual = self._check_images(input_ids, pixel_values)
            inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(is_visual, 0))
            if pixel_values is not None and pixel_values.shape[0]:
                features = self.get_image_features(pixel_values).to(inputs_embeds.dtype)
                inputs_embeds = inputs_embeds.masked_scatter(is_visual.unsqueeze(-1), features)
            elif self._needs_same_modules_on_every_rank():
                inputs_embeds = inputs_embeds + self._zero_weighted_image(inputs_embeds)
        else:
            if pixel_values is not None:
                raise ValueError("pixel_values need input_ids (to know where the images go), not inputs_embeds.")
            is_visual = torch.zeros(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)
        if labels is not None and labels.shape != is_visual.shape:
            raise ValueError(f"labels have shape {tuple(labels.shape)} but the inputs {tuple(is_visual.shape)}.")

        use_cache = use_cache if use_cache is not None else (self.config.text_config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.language_model.config)
        if not use_cache:
            cache = None
        if cache is not None and self.wings_layers:
            while len(cache.layers) <= self._cache_index("visual_positions"):  # learner slots after the LLM's
                kind = KINDS[len(cache.layers) - self._cache_index("text")]
                cache.layers.append(cache_layer(kind, self.learner_cache, inputs_embeds.device))
        past_length = cache.get_seq_length() if cache is not None else 0
        batch, length = is_visual.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, past_length + length, dtype=torch.long, device=is_visual.device)
        if position_ids is None:  # true positions: padding does not shift them
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]

        self._use_wings_attention()
        self._runtime.context = None
        if self.wings_layers:
            self._register_zero3_external_parameters()
            self._runtime.context = self._learner_inputs(
                inputs_embeds, is_visual, attention_mask, position_ids, cache, past_length
            )
        try:
            outputs = self.language_model.model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                **kwargs,
            )
        finally:
            if not (self.training and torch.is_grad_enabled()):  # checkpoint replays in backward still need it
                self._runtime.context = None
        hidden_states = outputs.last_hidden_state
        lm_head = self.get_output_embeddings()

        loss = logits = None
        if labels is not None:
            loss = self.labelled_loss(hidden_states, labels, lm_head, num_items_in_batch)
        else:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = lm_head(hidden_states[:, keep, :])
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache if use_cache else None,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def labelled_loss(
        self,
        hidden_states: torch.Tensor,
        labels: torch.Tensor,
        lm_head: nn.Module,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Next-token cross-entropy from the LM head applied only where a label exists."""
        targets = labels[:, 1:]
        selected = targets != IGNORE_INDEX
        vocab_size = lm_head.weight.shape[0]
        bad = selected & ((targets < 0) | (targets >= vocab_size))
        if bad.any():
            raise ValueError(
                f"labels hold {int(bad.sum())} id(s) outside the vocabulary [0, {vocab_size}) (image placeholders?): "
                f"set them to {IGNORE_INDEX}."
            )
        logits = lm_head(hidden_states[:, :-1][selected]).float()
        total = F.cross_entropy(logits, targets[selected], reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else selected.sum().clamp(min=1)
        if isinstance(count, torch.Tensor):
            count = count.to(total.device)
        return total / count


__all__ = [
    "PARAMETER_GROUPS",
    "WingsForConditionalGeneration",
    "WingsPreTrainedModel",
    "WingsProjector",
    "check_llm_layout",
]
