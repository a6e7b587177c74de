"""Batching encoded samples: padding on either side, images concatenated in order of appearance."""

from __future__ import annotations

from typing import Sequence

import torch

IGNORE_INDEX = -100


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
        pixel_values = [s["pixel_values"] for s in samples if s.get("pixel_values") is not None and len(s["pixel_values"])]
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
