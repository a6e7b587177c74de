"""`WingsProcessor`: tokenizer + image processor + batch padding, turning conversations into WINGS model inputs.

A conversation is rendered with the tokenizer's own chat template (ChatML, Llama 3, SmolLM2...);
each ``<image>`` placeholder (an added special token, never merged with its neighbours) becomes
`image_seq_length` copies of `image_token_id`, an id the model never looks up in its embedding table.
Labels are -100 everywhere except on assistant turns (their end-of-turn token included). `WingsCollator`
pads encoded samples into a batch. The processor sits between the data layer (which it imports) and the
model (which it does not).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AddedToken,
    AutoImageProcessor,
    CLIPImageProcessorPil,
    PreTrainedConfig,
    ProcessorMixin,
    SiglipImageProcessorPil,
)

from wings.data.formats import IGNORE_INDEX, IMAGE_PLACEHOLDER
from wings.data.images import DEFAULT_MAX_PIXELS, ImageSource, fit_within, load_image, pad_to_square
from wings.data.validation import SampleDropped

IMAGE_PREPROCESS_MODES = ("pad", "resize")


def tokens_per_image(vision_config: PreTrainedConfig) -> int:
    """Tokens a vision tower makes of one image (without a CLS token): its own count when it declares one (a CNN's
    padded grid), else (image_size / patch_size)^2 (a ViT's patches)."""
    declared = getattr(vision_config, "num_image_tokens", None)
    if declared is not None:
        return int(declared)
    return (vision_config.image_size // vision_config.patch_size) ** 2


class WingsProcessor(ProcessorMixin):
    """Tokenizer + image processor for WINGS models; saves and loads beside the model.

    Args:
        image_processor: a SigLIP or CLIP image processor with the vision tower's size, mean and std
            (see `build_image_processor`).
        tokenizer: the LLM's (fast) tokenizer; `image_token` is added to it as a special token.
        chat_template: overrides the tokenizer's chat template when given.
        image_token: the placeholder string marking each image's place in text.
        image_token_id: the id written at visual positions (`WingsConfig.image_token_id`).
        image_seq_length: visual tokens per image (`WingsConfig.image_seq_length`).
        image_preprocess: "pad" (pad to square with the mean colour, the authors' choice) or
            "resize" (stretch to the tower's square size).
        max_pixels: images larger than this are refused (decompression-bomb guard).
        system_prompt: the system message of a conversation that starts without one (None: the chat template's
            own default, if it has one). "" renders an empty system turn: SmolLM2's template would otherwise add
            its 20-token default, a third of a short VQA sample.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        image_token: str = IMAGE_PLACEHOLDER,
        image_token_id: int | None = None,
        image_seq_length: int | None = None,
        image_preprocess: str = "pad",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        system_prompt: str | None = None,
        **kwargs,
    ):
        if image_token_id is None or image_seq_length is None:
            raise ValueError("WingsProcessor needs image_token_id and image_seq_length (from the WingsConfig)")
        if image_preprocess not in IMAGE_PREPROCESS_MODES:
            raise ValueError(f"image_preprocess={image_preprocess!r}; use one of {IMAGE_PREPROCESS_MODES}")
        if tokenizer is not None:
            if not getattr(tokenizer, "is_fast", False):
                raise ValueError("WingsProcessor needs a fast tokenizer (character offsets place the labels)")
            # A special added token is matched whole before BPE, so "<image>" never merges with its neighbours.
            tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
            self.image_placeholder_id = tokenizer.convert_tokens_to_ids(image_token)
        self.image_token = image_token
        self.image_token_id = int(image_token_id)
        self.image_seq_length = int(image_seq_length)
        self.image_preprocess = image_preprocess
        self.max_pixels = int(max_pixels)
        self.system_prompt = system_prompt
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_vision_config(
        cls,
        tokenizer,
        vision_config,
        image_token_id: int,
        image_processor_path: str | os.PathLike | None = None,
        **kwargs,
    ) -> WingsProcessor:
        """Build from a tokenizer and a SigLIP/CLIP vision config (before any model exists)."""
        image_seq_length = tokens_per_image(vision_config)
        image_processor = build_image_processor(vision_config, image_processor_path)
        return cls(
            image_processor, tokenizer, image_token_id=image_token_id, image_seq_length=image_seq_length, **kwargs
        )

    @classmethod
    def from_model_config(cls, tokenizer, config, **kwargs) -> WingsProcessor:
        """Build from a tokenizer and a `WingsConfig` (its vision_config, image_token_id, image_seq_length)."""
        processor = cls.from_vision_config(tokenizer, config.vision_config, config.image_token_id, **kwargs)
        if processor.image_seq_length != config.image_seq_length:
            raise ValueError(
                f"image_seq_length {processor.image_seq_length} from the vision config differs from the "
                f"model config's {config.image_seq_length}"
            )
        return processor

    # ---------------------------------------------------------------------------------------- rendering
    def with_system_prompt(self, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """`messages` with the processor's system prompt first, unless they start with a system message."""
        messages = list(messages)
        if self.system_prompt is None or (messages and messages[0].get("role") == "system"):
            return messages
        return [{"role": "system", "content": self.system_prompt}] + messages

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """The conversation as text, through the chat template (placeholders kept as `image_token`)."""
        return self.tokenizer.apply_chat_template(
            self.with_system_prompt(messages),
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

    def apply_chat_template(self, conversation, **kwargs: Any):
        """The tokenizer's `apply_chat_template` (one conversation or a list), with the processor's chat template
        and system prompt, as `render` applies them."""
        if conversation and isinstance(conversation[0], (list, tuple)):
            conversation = [self.with_system_prompt(messages) for messages in conversation]
        else:
            conversation = self.with_system_prompt(conversation)
        kwargs.setdefault("chat_template", self.chat_template)
        return self.tokenizer.apply_chat_template(conversation, **kwargs)

    def assistant_spans(self, messages: Sequence[dict[str, str]], rendered: str) -> list[tuple[int, int]]:
        """Character ranges of each assistant turn in `rendered`: its content through its end-of-turn token.

        Found by rendering growing prefixes of the conversation, so it works for any template whose
        rendering of a prefix is a prefix of the rendering of the whole (ChatML, Llama 3, SmolLM2...).
        """
        spans = []
        for position, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:position], add_generation_prompt=True) if position else ""
            through = self.render(messages[: position + 1])
            if not (through.startswith(before) and rendered.startswith(through)):
                raise ValueError(
                    f"the chat template does not render conversation prefixes as prefixes (at message {position});"
                    " assistant turns cannot be located: use a template without history-dependent rewriting"
                )
            spans.append((len(before), len(through.rstrip())))  # trailing newline after end-of-turn: not learned
        return spans

    # ----------------------------------------------------------------------------------------- encoding
    def encode_conversation(
        self,
        messages: Sequence[dict[str, str]],
        images: Sequence[ImageSource] = (),
        max_length: int | None = None,
        add_generation_prompt: bool = False,
    ) -> dict[str, torch.Tensor]:
        """One training (or prompting) sample: ids, labels on assistant turns, visual mask, pixel values.

        Truncation (right side) never cuts inside an image's tokens and drops the images it cuts off.
        Raises `SampleDropped` when the images alone exceed `max_length` or no assistant token is left.
        """
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        rendered = self.render(messages, add_generation_prompt=add_generation_prompt)
        spans = self.assistant_spans(messages, rendered)
        return self.encode_text(rendered, images, spans, max_length, require_labels=not add_generation_prompt)

    def encode_text(
        self,
        text: str,
        images: Sequence[ImageSource] = (),
        label_spans: Sequence[tuple[int, int]] = (),
        max_length: int | None = None,
        require_labels: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Tokenize already-rendered text; characters inside `label_spans` are supervised."""
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = []
        labels: list[int] = []
        image_blocks: list[tuple[int, int]] = []
        for token_id, (start, _) in zip(encoding["input_ids"], encoding["offset_mapping"]):
            if token_id == self.image_placeholder_id:
                image_blocks.append((len(ids), len(ids) + self.image_seq_length))
                ids.extend([self.image_token_id] * self.image_seq_length)
                labels.extend([IGNORE_INDEX] * self.image_seq_length)
                continue
            ids.append(token_id)
            supervised = any(span_start <= start < span_end for span_start, span_end in label_spans)
            labels.append(token_id if supervised else IGNORE_INDEX)
        if len(image_blocks) != len(images):
            raise ValueError(
                f"{len(image_blocks)} {self.image_token} placeholder(s) in the text but {len(images)} image(s) given"
            )
        keep_images = len(images)
        if max_length is not None and len(ids) > max_length:
            cut, keep_images = self._truncation_point(image_blocks, max_length)
            ids, labels = ids[:cut], labels[:cut]
        if require_labels and all(label == IGNORE_INDEX for label in labels):
            raise SampleDropped(f"no assistant token within max_length={max_length}")
        input_ids = torch.tensor(ids, dtype=torch.long)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": torch.tensor(labels, dtype=torch.long),
            "image_token_mask": input_ids == self.image_token_id,
            "pixel_values": self.preprocess_images(list(images)[:keep_images]),
        }

    def _truncation_point(self, image_blocks: list[tuple[int, int]], max_length: int) -> tuple[int, int]:
        """Where to cut and how many images survive: never inside an image, never an image without its tokens."""
        if len(image_blocks) * self.image_seq_length > max_length:
            raise SampleDropped(
                f"{len(image_blocks)} image(s) x {self.image_seq_length} tokens = "
                f"{len(image_blocks) * self.image_seq_length} tokens exceed max_length={max_length}"
            )
        cut = max_length
        for start, end in image_blocks:
            if start < cut < end:
                cut = start
        return cut, sum(1 for _, end in image_blocks if end <= cut)

    def preprocess_images(self, images: Sequence[ImageSource]) -> torch.Tensor:
        """Load (any mode -> RGB, EXIF-rotated, size-checked), pad or resize, normalise: (N, 3, H, W)."""
        if not images:
            size = self.image_size
            return torch.zeros((0, 3, size, size))
        loaded = [load_image(image, self.max_pixels) for image in images]
        if self.image_preprocess == "pad":  # shrink before padding: the square is then at most the tower's size
            fill = tuple(int(round(channel * 255)) for channel in self.image_processor.image_mean)
            loaded = [pad_to_square(fit_within(image, self.image_size), fill) for image in loaded]
        return self.image_processor(images=loaded, return_tensors="pt")["pixel_values"]

    @property
    def image_size(self) -> int:
        size = self.image_processor.size
        return int(size.get("height") or size.get("shortest_edge"))

    # ---------------------------------------------------------------------------------------- batching
    def __call__(
        self,
        images: Sequence[ImageSource] | Sequence[Sequence[ImageSource]] | None = None,
        text: str | Sequence[str] | None = None,
        conversations: Sequence[Sequence[dict[str, str]]] | None = None,
        add_generation_prompt: bool = True,
        padding_side: str = "left",
        max_length: int | None = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """Batch for the model: either rendered `text` (str or list) or `conversations` (lists of messages).

        `images` is one list per sample (a flat list for a single sample). Left padding by default,
        for generation; conversations get labels on their assistant turns.
        """
        if (text is None) == (conversations is None):
            raise ValueError("give either text or conversations")
        if text is not None:
            single = isinstance(text, str)
            samples: list = [text] if single else list(text)
        else:
            single = bool(conversations) and isinstance(conversations[0], dict)  # one conversation, not a batch
            samples = [conversations] if single else list(conversations)
        if images is None:
            per_sample_images: list[Sequence[ImageSource]] = [[] for _ in samples]
        elif single:
            per_sample_images = [images]
        else:
            per_sample_images = list(images)
        if len(per_sample_images) != len(samples):
            raise ValueError(f"{len(samples)} samples but {len(per_sample_images)} image lists")
        encoded = []
        for sample, sample_images in zip(samples, per_sample_images):
            if text is not None:
                encoded.append(self.encode_text(sample, sample_images, max_length=max_length))
            else:
                encoded.append(
                    self.encode_conversation(
                        sample, sample_images, max_length, add_generation_prompt=add_generation_prompt
                    )
                )
        return WingsCollator(self.pad_token_id, padding_side=padding_side)(encoded)

    @property
    def pad_token_id(self) -> int:
        """The tokenizer's pad id, else its end-of-sequence id (padding is masked anyway)."""
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else (self.tokenizer.eos_token_id or 0)

    def decode(self, token_ids: Sequence[int] | torch.Tensor, **kwargs: Any) -> str:
        """Decode, leaving out visual positions (their id is outside the tokenizer's vocabulary)."""
        ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
        return self.tokenizer.decode([i for i in ids if i != self.image_token_id], **kwargs)

    def batch_decode(self, sequences: Sequence[Sequence[int]] | torch.Tensor, **kwargs: Any) -> list[str]:
        return [self.decode(sequence, **kwargs) for sequence in sequences]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_token_mask"]


def build_image_processor(vision_config, pretrained_path: str | os.PathLike | None = None):
    """The vision tower's image processor at its own size, mean and std, with no crop.

    With `pretrained_path` (the tower's local folder) its saved settings are used when it holds them
    (`preprocessor_config.json`); otherwise the family's defaults (SigLIP: mean = std = 0.5; CLIP: OpenAI's;
    a tower whose config names its own `image_mean` / `image_std`, like EfficientNet-Lite, those). The PIL
    backend is chosen so that pixel values are the same with or without torchvision installed.
    """
    size = {"height": vision_config.image_size, "width": vision_config.image_size}
    is_clip = "clip" in getattr(vision_config, "model_type", "")
    cls = CLIPImageProcessorPil if is_clip else SiglipImageProcessorPil
    settings: dict[str, Any] = {}
    if getattr(vision_config, "image_mean", None) is not None:  # the tower says how its weights saw pixels
        settings = {"image_mean": list(vision_config.image_mean), "image_std": list(vision_config.image_std)}
    if pretrained_path is not None and Path(pretrained_path, "preprocessor_config.json").is_file():
        saved = AutoImageProcessor.from_pretrained(pretrained_path)
        settings = {key: getattr(saved, key) for key in ("image_mean", "image_std", "resample") if hasattr(saved, key)}
    # Pad-to-square (or resize) already decided the framing: resize to the square, never crop.
    return cls(size=size, crop_size=size, do_center_crop=False, **settings)


class WingsCollator:
    """Pads a list of encoded samples (`WingsProcessor.encode_conversation` outputs) into one batch.

    Returns `input_ids`, `attention_mask`, `labels`, `image_token_mask` of shape (B, L) and, when
    the batch has images, `pixel_values` (N_images, 3, H, W) sample by sample, left to right.
    Left padding is what generation wants; right padding is the usual choice for training.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right", pad_to_multiple_of: int | None = None):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={padding_side!r}; use 'left' or 'right'")
        self.pad_token_id = int(pad_token_id)
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if not samples:
            raise ValueError("cannot collate an empty batch")
        length = max(len(sample["input_ids"]) for sample in samples)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {
            "input_ids": self._pad([s["input_ids"] for s in samples], length, self.pad_token_id),
            "attention_mask": self._pad([s["attention_mask"] for s in samples], length, 0),
            "image_token_mask": self._pad([s["image_token_mask"] for s in samples], length, False),
        }
        if all("labels" in sample for sample in samples):
            batch["labels"] = self._pad([s["labels"] for s in samples], length, IGNORE_INDEX)
        pixel_values = [
            s["pixel_values"] for s in samples if s.get("pixel_values") is not None and len(s["pixel_values"])
        ]
        if pixel_values:
            batch["pixel_values"] = torch.cat(pixel_values, dim=0)
        return batch

    def _pad(self, rows: list[torch.Tensor], length: int, value: int | bool) -> torch.Tensor:
        out = torch.full((len(rows), length), value, dtype=rows[0].dtype)
        for i, row in enumerate(rows):
            if self.padding_side == "right":
                out[i, : len(row)] = row
            else:
                out[i, length - len(row) :] = row
        return out


__all__ = ["WingsProcessor", "WingsCollator", "build_image_processor"]
