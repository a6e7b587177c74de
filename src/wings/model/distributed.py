"""What multi-process training asks of the model: every rank runs the same modules, and DeepSpeed ZeRO-3 gathers the
learner weights that the fast path reads outside their own module's forward."""

from __future__ import annotations

import torch
from torch import nn


def needs_same_modules_on_every_rank(model: nn.Module) -> bool:
    """Training with gradients: text-only batches still run the visual modules (with zero weight)."""
    return model.training and torch.is_grad_enabled() and model.vision_tower is not None


def zero_weighted_image(model: nn.Module, reference: torch.Tensor) -> torch.Tensor:
    """0 * (vision tower and projector on a blank image), for text-only training batches.

    Under DDP or DeepSpeed ZeRO-3 every rank must run the same modules in the same order; a rank whose batch has no
    image would otherwise skip them and hang the others. (The visual learners and routers run on such batches too,
    with no admissible key: see `LearnerInputs.run_visual`.) The result is exactly 0.
    """
    size = model.config.vision_config.image_size
    blank = torch.zeros(1, 3, size, size, device=reference.device)
    return model.get_image_features(blank).sum().to(reference.dtype) * 0.0


def register_zero3_external_parameters(model: nn.Module) -> None:
    """Under DeepSpeed ZeRO-3, tell DeepSpeed that the learner weights are read outside their own module's forward (the
    fast path runs the projections as batched matmuls, not as module calls), so it gathers them for the model's whole
    forward. They are low-rank: at Qwen2.5-7B shapes and rank 16, about 26M parameters."""
    if getattr(model, "_zero3_registered", False):
        return
    first = next(iter(model.wings_layers.parameters()))
    if not hasattr(first, "ds_id"):  # not partitioned by ZeRO-3
        return
    from deepspeed.runtime.zero import register_external_parameter  # DeepSpeed: only when ZeRO-3 partitioned us

    for layer in model.wings_layers.values():
        for learner in (layer.visual_learner, layer.textual_learner):
            for parameter in learner.parameters() if learner is not None else ():
                register_external_parameter(model, parameter)
    model._zero3_registered = True
