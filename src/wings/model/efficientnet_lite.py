"""EfficientNet-Lite as a WINGS vision tower: a convolutional network that maps pixels to a grid of feature tokens.

EfficientNet-Lite (Tan & Le 2019, the "lite" variant for mobile: ReLU6, no squeeze-and-excitation, fixed stem and
head) written with torch alone, in transformers' config / model shape, so a WINGS checkpoint saves and loads it with
`save_pretrained` / `from_pretrained` and no remote code. Convolutions use TensorFlow's "SAME" padding, computed for
the input at hand, as the network was trained with it; batch normalisation always uses its stored statistics
(`FrozenBatchNorm2d`), so the tower computes the same in train and eval mode and its features can be cached.

The output is a token sequence like a ViT's: `hidden_states` holds the stem's, every block's and the head's feature
maps flattened to (B, H W, C). The head's map (1280 channels, stride 32: a 112 px image gives 4 x 4 = 16 tokens) is
what WINGS' projector reads (`vision_feature_layer=-1`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

# EfficientNet-Lite0's stages: (repeats, kernel, stride, expansion, input channels, output channels).
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class EfficientNetLiteConfig(PreTrainedConfig):
    r"""Configuration of an [`EfficientNetLiteVisionModel`].

    Args:
        image_size: side of the square input in pixels.
        patch_size: the network's total stride: the output grid is ceil(image_size / patch_size) on each side.
        num_channels: input channels.
        stem_channels: channels of the stem convolution.
        stages: per stage `[repeats, kernel, stride, expansion, in_channels, out_channels]` (Lite0's by default).
        hidden_size: channels of the head convolution: the size of each output token.
        batch_norm_eps: epsilon of the batch normalisations.
        image_mean, image_std: the pixel normalisation the weights were trained with (per RGB channel, 0-1 scale).
    """

    model_type = "wings_efficientnet_lite"

    image_size: int = 112
    patch_size: int = 32
    num_channels: int = 3
    stem_channels: int = 32
    stages: list[list[int]] | None = None
    hidden_size: int = 1280
    batch_norm_eps: float = 1e-3
    # TensorFlow's EfficientNet-Lite preprocessing: (x - 127) / 128 on 0-255 pixels.
    image_mean: list[float] | None = None
    image_std: list[float] | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.stages = [list(stage) for stage in (self.stages or LITE0_STAGES)]
        self.image_mean = list(self.image_mean or [127.0 / 255] * 3)
        self.image_std = list(self.image_std or [128.0 / 255] * 3)
        stride = 2 * math.prod(stage[2] for stage in self.stages)
        if stride != self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} differs from the network's total stride {stride}.")

    @property
    def hidden_state_shapes(self) -> list[tuple[int, int]]:
        """(channels, stride) of each entry of `hidden_states`: the stem, every block, the head."""
        shapes, stride = [(self.stem_channels, 2)], 2
        for repeats, _, block_stride, _, _, outputs in self.stages:
            stride *= block_stride
            shapes += [(outputs, stride)] * repeats
        return shapes + [(self.hidden_size, stride)]

    @property
    def num_image_tokens(self) -> int:
        """Tokens per image: SAME padding rounds every strided size up (112 px -> 4 x 4)."""
        return math.ceil(self.image_size / self.patch_size) ** 2


class FrozenBatchNorm2d(nn.Module):
    """Batch normalisation with fixed statistics: `(x - running_mean) / sqrt(running_var + eps) * weight + bias`
    in every mode. Batch statistics would make a frozen tower's features depend on the batch and on train/eval."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale[:, None, None] + shift[:, None, None]


class ConvNorm(nn.Module):
    """Convolution with TensorFlow's SAME padding, frozen batch norm, optional ReLU6."""

    def __init__(
        self, inputs: int, outputs: int, kernel: int, stride: int, eps: float, groups: int = 1, activation: bool = True
    ):
        super().__init__()
        self.conv = nn.Conv2d(inputs, outputs, kernel, stride, padding=0, groups=groups, bias=False)
        self.norm = FrozenBatchNorm2d(outputs, eps)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # SAME: output size ceil(input / stride); the extra pixel of an odd padding goes after (TensorFlow's rule).
        kernel, stride = self.conv.kernel_size[0], self.conv.stride[0]
        pads = [max((math.ceil(size / stride) - 1) * stride + kernel - size, 0) for size in x.shape[-2:]]
        if any(pads):
            x = F.pad(x, (pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2))
        x = self.norm(self.conv(x))
        return F.relu6(x) if self.activation else x


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion -> depthwise kxk -> 1x1 projection, with a skip when shapes agree."""

    def __init__(self, inputs: int, outputs: int, kernel: int, stride: int, expansion: int, eps: float):
        super().__init__()
        hidden = inputs * expansion
        self.expand = ConvNorm(inputs, hidden, 1, 1, eps) if expansion != 1 else None
        self.depthwise = ConvNorm(hidden, hidden, kernel, stride, eps, groups=hidden)
        self.project = ConvNorm(hidden, outputs, 1, 1, eps, activation=False)
        self.skip = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x) if self.expand is not None else x))
        return x + y if self.skip else y


class EfficientNetLitePreTrainedModel(PreTrainedModel):
    config_class = EfficientNetLiteConfig
    config: EfficientNetLiteConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # No attention inside: whatever backend a composite model asks for is fine.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
        elif isinstance(module, FrozenBatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.running_mean.zero_()
            module.running_var.fill_(1.0)


class EfficientNetLiteVisionModel(EfficientNetLitePreTrainedModel):
    """EfficientNet-Lite without its classifier: pixels (B, 3, S, S) -> tokens (B, (S / 32)^2, hidden_size)."""

    def __init__(self, config: EfficientNetLiteConfig):
        super().__init__(config)
        eps = config.batch_norm_eps
        self.stem = ConvNorm(config.num_channels, config.stem_channels, 3, 2, eps)
        blocks = []
        for repeats, kernel, stride, expansion, inputs, outputs in config.stages:
            for repeat in range(repeats):  # the first block of a stage strides and changes the width
                first = repeat == 0
                blocks.append(
                    InvertedResidual(
                        inputs if first else outputs, outputs, kernel, stride if first else 1, expansion, eps
                    )
                )
        self.blocks = nn.ModuleList(blocks)
        self.head = ConvNorm(config.stages[-1][5], config.hidden_size, 1, 1, eps)
        self.post_init()

    def forward(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None, **kwargs
    ) -> BaseModelOutput:
        """`last_hidden_state`: the head's features as tokens in row-major order; `hidden_states`: the stem's,
        each block's and the head's, likewise (with `output_hidden_states=True`)."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must be (batch, {self.config.num_channels}, height, width), "
                f"got {tuple(pixel_values.shape)}"
            )
        states = []
        x = self.stem(pixel_values)
        states.append(x)
        for block in self.blocks:
            x = block(x)
            states.append(x)
        x = self.head(x)
        states.append(x)
        tokens = [state.flatten(2).transpose(1, 2) for state in states] if output_hidden_states else None
        return BaseModelOutput(
            last_hidden_state=x.flatten(2).transpose(1, 2), hidden_states=tuple(tokens) if tokens else None
        )


def convert_reference_state_dict(
    state: dict[str, torch.Tensor], config: EfficientNetLiteConfig
) -> dict[str, torch.Tensor]:
    """Rename the weights of the reference PyTorch port (`_conv_stem`, `_blocks.N._expand_conv`, ..., `_fc`) to this
    module's names; the classifier (`_fc`) and batch-norm counters are left out. Raises when a weight is missing."""
    names = {"_conv_stem.weight": "stem.conv.weight", "_conv_head.weight": "head.conv.weight"}
    for norm, target in (("_bn0", "stem.norm"), ("_bn1", "head.norm")):
        for field in ("weight", "bias", "running_mean", "running_var"):
            names[f"{norm}.{field}"] = f"{target}.{field}"
    count = sum(stage[0] for stage in config.stages)
    for index in range(count):
        for source, target in (
            ("_expand_conv", "expand"),
            ("_depthwise_conv", "depthwise"),
            ("_project_conv", "project"),
        ):
            names[f"_blocks.{index}.{source}.weight"] = f"blocks.{index}.{target}.conv.weight"
        for source, target in (("_bn0", "expand"), ("_bn1", "depthwise"), ("_bn2", "project")):
            for field in ("weight", "bias", "running_mean", "running_var"):
                names[f"_blocks.{index}.{source}.{field}"] = f"blocks.{index}.{target}.norm.{field}"
    converted = {target: state[source] for source, target in names.items() if source in state}
    return converted


# A WINGS checkpoint names its tower by model_type: registering it lets transformers rebuild it with no remote code.
AutoConfig.register(EfficientNetLiteConfig.model_type, EfficientNetLiteConfig, exist_ok=True)
AutoModel.register(EfficientNetLiteConfig, EfficientNetLiteVisionModel, exist_ok=True)

__all__ = [
    "EfficientNetLiteConfig",
    "EfficientNetLitePreTrainedModel",
    "EfficientNetLiteVisionModel",
    "FrozenBatchNorm2d",
    "convert_reference_state_dict",
]
