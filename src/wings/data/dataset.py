"""Training data sets: one indexed conversation file, and a mixture of several with ratios.

A `ConversationDataset` checks every record's structure once when built (cheap: no image is
opened) and fails fast on the first bad one, naming file, record and field, unless
`skip_invalid=True`, which skips bad records and reports how many and why. Images are opened
and samples tokenized only in `__getitem__`, i.e. in the data loader's workers; what is skipped or
dropped there is also appended to `events_dir` (one JSON line per event and process), so that the
run's provenance can say exactly which records it trained without (`read_data_events`).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from wings.data.formats import Conversation, RecordError, RecordFile, normalize_record
from wings.data.images import ImageLoadError
from wings.data.validation import ConversationProcessor, Problem, SampleDropped, conversation_problems

logger = logging.getLogger(__name__)

# Rough characters per token, only to group samples of similar length (never to truncate).
CHARS_PER_TOKEN = 4
IMAGES_ALONE_TOO_LONG = "images alone exceed max_length"
NO_ANSWER_LEFT = "no assistant token left after truncation"


class InvalidSampleError(ValueError):
    """A bad sample met while training with `skip_invalid=False`; the message names it and what to do."""


class ConversationDataset(Dataset):
    """The samples of one LLaVA / "messages" / OpenAI-parts file, encoded by a processor (`WingsProcessor`).

    Args:
        path: JSON array or JSON Lines file.
        processor: turns conversations into model inputs.
        image_folder: where relative image paths resolve (default: the file's folder).
        max_length: truncation length in tokens (images never cut); None: no limit.
        skip_invalid: skip bad records (counted in `skipped`) instead of raising `InvalidSampleError`.
        check_image_files: check at build time that every image file exists (one `stat` each).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        processor: ConversationProcessor,
        image_folder: str | os.PathLike | None = None,
        max_length: int | None = None,
        skip_invalid: bool = False,
        check_image_files: bool = True,
    ):
        self.records = RecordFile(path)
        self.path = self.records.path
        self.image_folder = os.fspath(Path(path).parent if image_folder is None else image_folder)
        self.processor = processor
        self.max_length = max_length
        self.skip_invalid = skip_invalid
        self.skipped: Counter = Counter()  # reason -> count, for bad records (with skip_invalid)
        self.dropped: Counter = Counter()  # reason -> count, for samples that cannot fit max_length
        self.skipped_records: dict[str, list[int]] = defaultdict(list)  # reason -> record indices
        self.dropped_records: dict[str, list[int]] = defaultdict(list)
        self.events_dir: str | None = None  # where skips and drops met while loading are logged (set by training)
        self.indices, self.lengths, self.has_images = self._scan(check_image_files)
        if self.skipped or self.dropped:
            logger.warning("%s: %s", self.path, self.summary())

    def summary(self) -> str:
        """One line: how many records passed the checks made so far, skipped and dropped, and why."""
        parts = [f"{len(self)} of {len(self.records)} records pass the checks so far (images are opened when used)"]
        if self.skipped:
            parts.append("skipped " + ", ".join(f"{n} ({reason})" for reason, n in self.skipped.most_common()))
        if self.dropped:
            parts.append("dropped " + ", ".join(f"{n} ({reason})" for reason, n in self.dropped.most_common()))
        return "; ".join(parts)

    def _scan(self, check_image_files: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        indices, lengths, has_images = [], [], []
        image_seq_length = self.processor.image_seq_length
        for index in range(len(self.records)):
            try:
                conversation = self.conversation(index)
                problems = conversation_problems(conversation, check_image_files)
            except RecordError as error:
                problems = [Problem(index, error.field, "format", error.reason)]
            if problems:
                if not self.skip_invalid:
                    raise InvalidSampleError(
                        f"{self.path}: {problems[0]}. Fix it (`wings data check {self.path}` lists every "
                        "problem) or pass skip_invalid=True (--skip-invalid-samples) to skip such records"
                    )
                self._note("skipped", problems[0].kind, index, log=False)
                continue
            image_tokens = len(conversation.images) * image_seq_length
            if self.max_length is not None and image_tokens > self.max_length:
                self._note("dropped", IMAGES_ALONE_TOO_LONG, index, log=False)
                continue
            indices.append(index)
            lengths.append(
                image_tokens + conversation.num_text_chars // CHARS_PER_TOKEN + 4 * len(conversation.messages)
            )
            has_images.append(bool(conversation.images))
        return np.asarray(indices, dtype=np.int64), np.asarray(lengths, dtype=np.int64), np.asarray(has_images, bool)

    def conversation(self, record_index: int) -> Conversation:
        """The record at `record_index` of the file (not of the data set), normalised."""
        return normalize_record(self.records.record(record_index), self.image_folder, self.path, record_index)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        # A sample that turns out bad here (unreadable image, nothing left after truncation) is replaced by the next.
        for attempt in range(len(self)):
            record_index = int(self.indices[(item + attempt) % len(self)])
            conversation = self.conversation(record_index)
            try:
                return self.processor.encode_conversation(conversation.to_chat(), conversation.images, self.max_length)
            except SampleDropped as error:
                self._note(
                    "dropped", NO_ANSWER_LEFT if "assistant" in str(error) else IMAGES_ALONE_TOO_LONG, record_index
                )
                logger.warning("%s: record %d dropped: %s", self.path, record_index, error)
            except (ImageLoadError, ValueError) as error:
                if not self.skip_invalid:
                    raise InvalidSampleError(
                        f"{self.path}: record {record_index}: {error}. Fix it or pass skip_invalid=True "
                        "(--skip-invalid-samples) to skip such records"
                    ) from error
                self._note(
                    "skipped", "unreadable image" if isinstance(error, ImageLoadError) else "encoding", record_index
                )
                logger.warning("%s: record %d skipped: %s", self.path, record_index, error)
        raise InvalidSampleError(f"{self.path}: no usable sample left ({self.summary()})")

    def _note(self, what: str, reason: str, record_index: int, log: bool = True) -> None:
        """Count a skipped or dropped record; while loading (`log`), also append it to `events_dir`."""
        (self.skipped if what == "skipped" else self.dropped)[reason] += 1
        (self.skipped_records if what == "skipped" else self.dropped_records)[reason].append(record_index)
        if log and self.events_dir is not None:
            os.makedirs(self.events_dir, exist_ok=True)
            event = {"path": self.path, "record": record_index, "what": what, "reason": reason}
            with open(os.path.join(self.events_dir, f"{os.getpid()}.jsonl"), "a", encoding="utf-8") as handle:
                handle.write(json.dumps(event) + "\n")


def read_data_events(events_dir: str | os.PathLike) -> dict[str, dict[str, dict[str, list[int]]]]:
    """Skips and drops logged while loading: path -> "skipped"/"dropped" -> reason -> sorted record indices."""
    found: dict[str, dict[str, dict[str, set[int]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(set)))
    folder = Path(events_dir)
    for log in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a killed worker
                continue
            found[event["path"]][event["what"]][event["reason"]].add(int(event["record"]))
    return {
        path: {
            what: {reason: sorted(indices) for reason, indices in reasons.items()} for what, reasons in kinds.items()
        }
        for path, kinds in found.items()
    }


class MixtureDataset(Dataset):
    """Several data sets mixed by ratio: each contributes `ratio x len(dataset)` samples.

    A ratio of 0.5 takes a random half of a data set, 2.0 takes it twice; the choice is fixed by
    `seed`. `lengths` and `has_images` follow, for the length- and modality-grouped sampler.
    """

    def __init__(self, datasets: Sequence[ConversationDataset], ratios: Sequence[float], seed: int = 0):
        if len(datasets) != len(ratios):
            raise ValueError(f"{len(datasets)} data sets but {len(ratios)} ratios")
        if any(ratio < 0 for ratio in ratios):
            raise ValueError(f"ratios must be >= 0, got {list(ratios)}")
        self.datasets = list(datasets)
        self.ratios = list(ratios)
        generator = np.random.default_rng(seed)
        parts = []
        for number, (dataset, ratio) in enumerate(zip(self.datasets, self.ratios)):
            count = int(round(ratio * len(dataset)))
            repeats, remainder = divmod(count, len(dataset)) if len(dataset) else (0, 0)
            chosen = np.concatenate(
                [np.tile(np.arange(len(dataset)), repeats), generator.permutation(len(dataset))[:remainder]]
            ).astype(np.int64)
            parts.append(np.stack([np.full_like(chosen, number), chosen], axis=1))
        self.index = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
        self.lengths = np.asarray([self.datasets[d].lengths[i] for d, i in self.index], dtype=np.int64)
        self.has_images = np.asarray([self.datasets[d].has_images[i] for d, i in self.index], dtype=bool)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        dataset_number, sample = self.index[item]
        return self.datasets[int(dataset_number)][int(sample)]

    def summary(self) -> str:
        return "\n".join(
            f"{dataset.path}: ratio {ratio} -> {int((self.index[:, 0] == n).sum())} samples; {dataset.summary()}"
            for n, (dataset, ratio) in enumerate(zip(self.datasets, self.ratios))
        )


@dataclass
class DataSource:
    """One entry of a data config: a file, its image folder, and its mixing ratio."""

    path: str
    image_folder: str | None = None
    ratio: float = 1.0


def read_data_config(config: str | os.PathLike | dict[str, Any]) -> list[DataSource]:
    """Read ``datasets: [{path, image_folder, ratio}, ...]`` from a YAML file or a dict.

    Relative paths in a YAML file resolve against the file's folder.
    """
    base = None
    if not isinstance(config, dict):
        base = Path(config).parent
        with open(config, encoding="utf-8") as handle:
            config = yaml.safe_load(handle) or {}
    entries = config.get("datasets")
    if not isinstance(entries, list) or not entries:
        raise ValueError("the data config needs a non-empty 'datasets' list of {path, image_folder, ratio}")
    sources = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or "path" not in entry:
            raise ValueError(f"datasets[{number}]: expected {{path, image_folder, ratio}}, got {entry!r}")
        unknown = set(entry) - {"path", "image_folder", "ratio"}
        if unknown:
            raise ValueError(f"datasets[{number}]: unknown key(s) {sorted(unknown)}; use path, image_folder, ratio")

        def resolve(value: str | None) -> str | None:
            return value if value is None or base is None or os.path.isabs(value) else str(base / value)

        sources.append(
            DataSource(resolve(entry["path"]), resolve(entry.get("image_folder")), float(entry.get("ratio", 1.0)))
        )
    return sources


def build_dataset(
    config: str | os.PathLike | dict[str, Any],
    processor: ConversationProcessor,
    max_length: int | None = None,
    skip_invalid: bool = False,
    seed: int = 0,
) -> MixtureDataset:
    """The training set a data config describes (one or several files, mixed by ratio)."""
    sources = read_data_config(config)
    datasets = [ConversationDataset(s.path, processor, s.image_folder, max_length, skip_invalid) for s in sources]
    return MixtureDataset(datasets, [source.ratio for source in sources], seed=seed)
