"""A sampler that groups samples by modality and by length, so batches waste little padding.

Image and text-only samples go to separate batches (as in LLaVA's modality-grouped sampler):
a batch of text-only samples then skips the vision tower, and padding stays small because each
mega-batch is sorted by length before it is cut into batches. The batch order is shuffled.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Yields indices so that every `batch_size` consecutive ones share a modality and have similar lengths.

    Args:
        lengths: estimated tokens per sample (e.g. `dataset.lengths`).
        has_images: whether each sample has images (e.g. `dataset.has_images`); None: one modality.
        batch_size: samples per batch on all devices together (per-device batch x world size).
        mega_batch_factor: batches per sorted mega-batch; larger groups lengths better, shuffles less.
        seed: reshuffles per epoch with `set_epoch`.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        has_images: Sequence[bool] | None,
        batch_size: int,
        mega_batch_factor: int = 50,
        seed: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.has_images = np.zeros(len(self.lengths), bool) if has_images is None else np.asarray(has_images, bool)
        if len(self.has_images) != len(self.lengths):
            raise ValueError(f"{len(self.lengths)} lengths but {len(self.has_images)} modality flags")
        self.batch_size = batch_size
        self.mega_batch_factor = mega_batch_factor
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[np.ndarray]:
        """This epoch's batches: same modality within each (except one mixed leftover batch at the end)."""
        generator = np.random.default_rng((self.seed, self.epoch))
        full_batches, leftovers = [], []
        for modality in (True, False):
            indices = generator.permutation(np.flatnonzero(self.has_images == modality))
            mega = self.batch_size * self.mega_batch_factor
            for start in range(0, len(indices), mega):
                group = indices[start : start + mega]
                group = group[np.argsort(-self.lengths[group], kind="stable")]  # longest first within the group
                for cut in range(0, len(group), self.batch_size):
                    batch = group[cut : cut + self.batch_size]
                    (full_batches if len(batch) == self.batch_size else leftovers).append(batch)
        order = generator.permutation(len(full_batches))
        batches = [full_batches[i] for i in order]
        if leftovers:
            rest = np.concatenate(leftovers)
            batches.extend(rest[cut : cut + self.batch_size] for cut in range(0, len(rest), self.batch_size))
        return batches

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from (int(index) for index in batch)
