"""`WingsConfig`: a Llama-family text config + a vision tower config + the WINGS options."""

from __future__ import annotations

from typing import Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .efficientnet_lite import EfficientNetLiteConfig  # registers the CNN tower's model_type with AutoConfig
from .processing_wings import tokens_per_image  # the processor owns image geometry

LEARNER_MODES = ("wings", "visual", "none")


class WingsConfig(PreTrainedConfig):
    r"""Configuration of a [`WingsForConditionalGeneration`].

    Args:
        text_config: config of the LLM (any Llama-family causal LM: Llama, Qwen2/2.5/3, Mistral, SmolLM2).
        vision_config: config of the vision tower (SigLIP, CLIP or EfficientNet-Lite vision model); None for a model
            without one.
        image_token_id: id marking visual positions in `input_ids`. Defaults to the LLM's `vocab_size`: one
            past the text vocabulary, never looked up in the embedding table, so the LLM is never resized.
        projector_hidden_act: activation between the projector's two linear layers.
        vision_feature_layer: which hidden state of the vision tower feeds the projector. None picks the tower's
            usual one: -2 for a ViT (penultimate, before the post-norm), -1 for a CNN (the head's feature map).
        vision_feature_select_strategy: "default" drops a leading CLS token when the tower has one (CLIP);
            "full" keeps every token.
        learners: "wings" (visual + textual learner and router: h' = h + a + w_v L_v + w_t L_t),
            "visual" (visual learner alone, no router: h' = h + a + L_v; the align stage and the paper's
            ablation), "none" (no learners: the LLaVA-style baseline).
        wings_layers: decoder layers that get learners; None means every layer.
        lorra_rank: rank r of the low-rank residual projections of each learner.
        lorra_init_std: std of the truncated-normal init of the A matrices (B starts at 0).
        router_init_visual_weight: w_v that a new router gives every token that sees an image (w_t = 1 - w_v),
            through its bias; W starts at 0. Stage 1 trains the visual learner with weight 1 (no router), so a
            value near 1 lets stage 2 start from what stage 1 learnt instead of halving it.
        base_llm: name or path of the LLM this model was built from (for provenance and evaluation).
        base_vision: name or path of the vision tower this model was built from.
        llm_checkpoint: set when the checkpoint leaves out the LLM's weights (they were frozen while training):
            where to read them (a registry name, an HF causal-LM directory or a WINGS checkpoint).
            `from_pretrained` loads them from there; `wings export` writes a standalone directory.
    """

    model_type = "wings"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model", optional=True),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    image_token_id: int | None = None
    projector_hidden_act: str = "gelu"
    vision_feature_layer: int | None = None
    vision_feature_select_strategy: Literal["default", "full"] = "default"
    learners: Literal["wings", "visual", "none"] = "wings"
    wings_layers: list[int] | None = None
    lorra_rank: int = 16
    lorra_init_std: float = 0.02
    router_init_visual_weight: float = 0.9
    base_llm: str | None = None
    base_vision: str | None = None
    llm_checkpoint: str | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.image_token_id is None:
            self.image_token_id = self.text_config.vocab_size
        if self.vision_feature_layer is None:
            is_cnn = getattr(self.vision_config, "model_type", None) == EfficientNetLiteConfig.model_type
            self.vision_feature_layer = -1 if is_cnn else -2
        if self.vision_config is not None:  # a text-only WINGS model has no tower to read
            check_vision_feature_layer(self.vision_config, self.vision_feature_layer)
        # The LLM's own setting decides whether its head shares the embedding matrix.
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        self.validate_wings_options()

    def validate_wings_options(self) -> None:
        """Raise a clear error for options that cannot describe a WINGS model."""
        if self.learners not in LEARNER_MODES:
            raise ValueError(f"learners={self.learners!r} is not one of {LEARNER_MODES}.")
        if self.lorra_rank < 1:
            raise ValueError(f"lorra_rank must be a positive integer, got {self.lorra_rank}.")
        if not 0.0 < self.router_init_visual_weight < 1.0:
            raise ValueError(
                f"router_init_visual_weight must be in (0, 1) (a softmax weight), got {self.router_init_visual_weight}."
            )
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy={self.vision_feature_select_strategy!r}: use 'default' or 'full'."
            )
        num_layers = self.text_config.num_hidden_layers
        if self.wings_layers is not None:
            self.wings_layers = sorted({int(i) for i in self.wings_layers})
            bad = [i for i in self.wings_layers if not 0 <= i < num_layers]
            if bad:
                raise ValueError(f"wings_layers {bad} are outside the LLM's layers 0..{num_layers - 1}.")

    @property
    def learner_layers(self) -> list[int]:
        """Indices of the decoder layers that carry learners (empty for the LLaVA-style baseline)."""
        if self.learners == "none":
            return []
        if self.wings_layers is None:
            return list(range(self.text_config.num_hidden_layers))
        return list(self.wings_layers)

    @property
    def has_cls_token(self) -> bool:
        """CLIP's vision embeddings start with a class token; SigLIP's do not."""
        return getattr(self.vision_config, "model_type", "").startswith("clip")

    @property
    def vision_feature_size(self) -> int:
        """Width of the tower's hidden state that feeds the projector (a CNN's hidden states differ in width)."""
        shapes = getattr(self.vision_config, "hidden_state_shapes", None)
        return shapes[self.vision_feature_layer][0] if shapes is not None else self.vision_config.hidden_size

    @property
    def image_seq_length(self) -> int:
        """Number of visual tokens each image occupies in the LLM's sequence."""
        patches = tokens_per_image(self.vision_config)
        if self.vision_feature_select_strategy == "full" and self.has_cls_token:
            return patches + 1
        return patches


def check_vision_feature_layer(vision_config: PreTrainedConfig, layer: int) -> None:
    """Raise a clear error when `layer` names no hidden state of the tower WINGS can read: outside the tower's
    hidden states (the embeddings' and one per layer or block), or (a CNN) a map at another stride than its last."""
    shapes = getattr(vision_config, "hidden_state_shapes", None)  # a CNN: its hidden states differ in width and grid
    count = len(shapes) if shapes is not None else vision_config.num_hidden_layers + 1
    if not -count <= layer < count:
        raise ValueError(
            f"vision_feature_layer {layer} is outside the tower's {count} hidden states: "
            f"use one of {-count}..{count - 1}."
        )
    if shapes is not None and shapes[layer][1] != vision_config.patch_size:
        final = [i - len(shapes) for i, (_, stride) in enumerate(shapes) if stride == vision_config.patch_size]
        raise ValueError(
            f"vision_feature_layer {layer} is a stride-{shapes[layer][1]} map; WINGS reads a map at the tower's final "
            f"stride ({vision_config.patch_size}): one of {final[0]}..-1."
        )


__all__ = ["WingsConfig", "LEARNER_MODES", "check_vision_feature_layer"]
