"""wings: give a text LLM eyes without text-only forgetting (WINGS, arXiv 2406.03496).

Importing the package registers the WINGS config and model with transformers' Auto classes, so saved
checkpoints load with `AutoConfig` / `AutoModelForImageTextToText` and no `trust_remote_code`.
"""

from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from .model import WingsConfig, WingsForConditionalGeneration
from .model.processing_wings import WingsProcessor

__version__ = "0.1.0.dev0"

AutoConfig.register(WingsConfig.model_type, WingsConfig, exist_ok=True)
AutoModelForImageTextToText.register(WingsConfig, WingsForConditionalGeneration, exist_ok=True)
AutoProcessor.register(WingsConfig, WingsProcessor, exist_ok=True)

__all__ = ["WingsConfig", "WingsForConditionalGeneration", "WingsProcessor", "__version__"]
