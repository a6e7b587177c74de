"""`WingsForConditionalGeneration`: vision tower -> projector -> any Llama-family HF LLM, with WINGS learners.

In the shape of transformers' LLaVA: build, save/load, image features, forward, loss. The LLM is used as it is; the
learners attach from outside (`wiring.py`) and get their per-forward inputs (`learner_inputs.py`) as a keyword
argument that transformers passes down to every attention layer. The learners' keys and values live in the same HF
`Cache` as the LLM's, as extra cache layers (`learner_cache.py`), so beam search, cropping and batch selection treat
them like every other layer. The WINGS layer itself: `learners.py` (the formulas), `fused.py` (the fast path).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, DynamicCache, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from wings.data.formats import IGNORE_INDEX

from . import distributed
from .attention import register_wings_attention
from .configuration_wings import WingsConfig
from .feature_cache import DEFAULT_MAX_BYTES, VisionFeatureCache
from .learner_cache import KINDS
from .learners import LowRankDown, LowRankUp, RouterProjection, WingsLayer
from .loading import AsIs, build_around, check_llm_layout, from_pretrained_around_llm, load_llm_checkpoint
from .wiring import attach_learners, forward_context, learner_context, learner_rotary, use_wings_attention

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
        # The learners' matrices are typed by their rule (learners.py): A ~ trunc-normal, B = 0, router W = 0 and
        # b = [logit(w0), 0]. (transformers' `init` functions leave loaded weights alone.)
        if isinstance(module, LowRankDown):
            std = module.init_std
            init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        elif isinstance(module, LowRankUp):
            init.zeros_(module.weight)
        elif isinstance(module, RouterProjection):
            init.zeros_(module.weight)
            init.copy_(module.bias, module.initial_bias().to(module.bias.dtype))
        else:
            super()._init_weights(module)


class WingsForConditionalGeneration(WingsPreTrainedModel, GenerationMixin):
    """A multimodal LLM: vision tower, projector, the LLM, and the WINGS learners beside its attention.

    With `config.learners == "none"` it is the LLaVA-style baseline on the same code.
    """

    learner_cache = "auto"  # form of the learners' KV cache: auto, full or compact (learner_cache.py)
    learner_path = "fused"  # "plain": run WingsLayer.forward, the formulas (learners.py), without a KV cache

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
                    text.hidden_size,
                    text.num_attention_heads,
                    config.lorra_rank,
                    config.learners,
                    config.lorra_init_std,
                    config.router_init_visual_weight,
                )
                for index in config.learner_layers
            }
        )
        self.learner_rotary = learner_rotary(self.language_model) if self.wings_layers else None
        self.vision_feature_cache: VisionFeatureCache | None = None  # enable_vision_feature_cache()
        if self.wings_layers:
            attach_learners(self.language_model, self.wings_layers)
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
                config.llm_checkpoint, config.text_config, dtype, kwargs.get("attn_implementation"), cls
            )
        if "language_model" not in kwargs:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        return from_pretrained_around_llm(super().from_pretrained, cls, pretrained_model_name_or_path, args, kwargs)

    @classmethod
    def from_llm_and_vision(
        cls,
        llm: PreTrainedModel | str,
        vision: PreTrainedModel | str | None,
        *,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        **wings_options: Any,
    ) -> WingsForConditionalGeneration:
        """Build a WINGS model around an existing LLM and vision tower (objects, hub ids or local paths).

        `wings_options` are `WingsConfig` fields (learners, wings_layers, lorra_rank, ...). New modules
        (projector, learners, routers) are freshly initialised; the LLM and tower keep their weights.
        """
        return build_around(cls, llm, vision, dtype, attn_implementation, wings_options)

    def set_attn_implementation(self, attn_implementation: str | dict, **kwargs: Any) -> None:
        super().set_attn_implementation(attn_implementation, **kwargs)
        if self.wings_layers:
            use_wings_attention(self.language_model)

    def _activation_checkpointing_enable(
        self, activation_checkpointing_kwargs: dict | None = None, every_n_layers: int = 1, offload: bool = False
    ) -> None:
        # The learners' context is a keyword argument holding tensors: only non-reentrant replay passes it on.
        kwargs = {**(activation_checkpointing_kwargs or {}), "use_reentrant": False}
        super()._activation_checkpointing_enable(kwargs, every_n_layers, offload)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of WINGS' own modules (projector, else learners), which every checkpoint holds (saved as the
        config's `dtype`): a frozen LLM may be held in bf16 while they train in float32 (`run_stage`). Without
        either, the LLM's."""
        for module in (self.projector, self.wings_layers):
            for parameter in module.parameters() if module is not None else ():
                if parameter.is_floating_point():
                    return parameter.dtype
        return self.language_model.dtype

    def parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Named parameters by role (the training stages freeze, train and set learning rates by group)."""
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {name: [] for name in PARAMETER_GROUPS}
        for name, parameter in self.named_parameters():
            if name.startswith("wings_layers."):
                part = name.split(".")[2]
                group = {"visual_learner": "visual_learners", "textual_learner": "textual_learners"}.get(
                    part, "routers"
                )
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

    def _expand_inputs_for_generation(
        self,
        expand_size: int = 1,
        is_encoder_decoder: bool = False,
        input_ids: torch.LongTensor | None = None,
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

    # ----- the learners' inputs ---------------------------------------------------------------------------
    def _cache_index(self, kind: str) -> int:
        """Where learner state lives in the HF cache: after the LLM's own layers, one cache layer per kind."""
        return self.config.text_config.num_hidden_layers + KINDS.index(kind)

    def _embed(
        self, input_ids: torch.Tensor | None, pixel_values: torch.Tensor | None, inputs_embeds: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(input embeddings with the visual features at the image placeholders, which positions are visual)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids or inputs_embeds.")
        if input_ids is None:
            if pixel_values is not None:
                raise ValueError("pixel_values need input_ids (to know where the images go), not inputs_embeds.")
            return inputs_embeds, torch.zeros(inputs_embeds.shape[:2], dtype=torch.bool, device=inputs_embeds.device)
        is_visual = self._check_images(input_ids, pixel_values)
        inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(is_visual, 0))
        if pixel_values is not None and pixel_values.shape[0]:
            features = self.get_image_features(pixel_values).to(inputs_embeds.dtype)
            inputs_embeds = inputs_embeds.masked_scatter(is_visual.unsqueeze(-1), features)
        elif distributed.needs_same_modules_on_every_rank(self):
            inputs_embeds = inputs_embeds + distributed.zero_weighted_image(self, inputs_embeds)
        return inputs_embeds, is_visual

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
        image_token_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Token ids with `image_token_id` at visual positions, `pixel_values` one image per placeholder run
        (`image_token_mask`, the processor's copy of what input_ids say, is accepted and not needed).

        With `labels` (unshifted, -100 where unsupervised) the loss is computed from the LM head at labelled
        positions only, and `logits` is None.
        """
        cache = cache if cache is not None else past_key_values
        inputs_embeds, is_visual = self._embed(input_ids, pixel_values, inputs_embeds)
        if labels is not None and labels.shape != is_visual.shape:
            raise ValueError(f"labels have shape {tuple(labels.shape)} but the inputs {tuple(is_visual.shape)}.")

        use_cache = use_cache if use_cache is not None else (self.config.text_config.use_cache and not self.training)
        cache = (cache or DynamicCache(config=self.language_model.config)) if use_cache else None
        past_length = cache.get_seq_length() if cache is not None else 0
        batch, length = is_visual.shape
        if attention_mask is None:
            attention_mask = torch.ones(batch, past_length + length, dtype=torch.long, device=is_visual.device)
        if position_ids is None:  # true positions: padding does not shift them
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]

        context = None
        if self.wings_layers:
            context = learner_context(self, inputs_embeds, is_visual, attention_mask, position_ids, cache, past_length)
        outputs = self.language_model.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **forward_context(kwargs, context),
        )
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


__all__ = ["PARAMETER_GROUPS", "WingsForConditionalGeneration", "WingsPreTrainedModel", "WingsProjector"]
