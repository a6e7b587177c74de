"""Two-stage training of WINGS (and the LLaVA-style baseline) on transformers' Trainer."""

from .stages import STAGES, Stage, get_stage, prepare_model_for_stage

__all__ = ["STAGES", "Stage", "get_stage", "prepare_model_for_stage"]
