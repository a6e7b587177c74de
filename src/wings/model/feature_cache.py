"""A cache of a frozen vision tower's features, keyed by each image's pixels and by the tower's weights.

WINGS keeps the vision tower frozen in both stages (WINGS.md), so an image's features are the same at every
epoch and in every stage: computing them once and reusing them takes the tower out of the training step. The key of
an entry is a digest of the image's preprocessed pixels (values, shape, dtype) and of the tower: the identity and
version counter of each of its weights, so loading or changing any weight, or another tower, misses. Entries are
kept least-recently-used first within a byte budget.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

DEFAULT_MAX_BYTES = 2 * 1024**3


def tower_state_key(tower: nn.Module) -> tuple:
    """Changes whenever a weight of `tower` is replaced, moved or updated in place."""
    return tuple((id(t), t.data_ptr(), t._version) for t in (*tower.parameters(), *tower.buffers()))


def image_digest(pixels: torch.Tensor) -> bytes:
    """A digest of one image's pixel tensor: its values, shape and dtype."""
    data = pixels.detach().contiguous().cpu()
    digest = hashlib.blake2b(data.view(torch.uint8).numpy().tobytes(), digest_size=16)
    digest.update(repr((tuple(data.shape), str(data.dtype))).encode())
    return digest.digest()


class VisionFeatureCache:
    """Per-image tower features (the selected hidden state, before the projector), LRU within `max_bytes`."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}.")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def features(
        self, tower: nn.Module, pixel_values: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """`compute(pixel_values)` (num_images, tokens, channels), each image taken from the cache when it is there;
        the images that miss are computed together in one call and stored."""
        tower_key = tower_state_key(tower)
        keys = [(tower_key, image_digest(image)) for image in pixel_values]
        found = [self._entries.get(key) for key in keys]
        missing = [index for index, entry in enumerate(found) if entry is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = compute(pixel_values[missing]).detach()
            for index, features in zip(missing, computed):
                found[index] = self._store(keys[index], features.clone())
        for key in keys:
            if key in self._entries:
                self._entries.move_to_end(key)
        return torch.stack(found).to(pixel_values.device)

    def _store(self, key: tuple, features: torch.Tensor) -> torch.Tensor:
        if key in self._entries:  # the same image twice in one batch
            return self._entries[key]
        size = features.numel() * features.element_size()
        if size <= self.max_bytes:
            self._entries[key] = features
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= evicted.numel() * evicted.element_size()
        return features

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


__all__ = ["DEFAULT_MAX_BYTES", "VisionFeatureCache", "image_digest", "tower_state_key"]
