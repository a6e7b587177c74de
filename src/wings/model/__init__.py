"""Config, model and processor of WINGS, in the shape of transformers' models."""

from .configuration_wings import WingsConfig
from .modeling_wings import WingsForConditionalGeneration, WingsPreTrainedModel

__all__ = ["WingsConfig", "WingsForConditionalGeneration", "WingsPreTrainedModel"]
