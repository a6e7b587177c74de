"""Checking conversation files: every problem, by record index and field, with what to do.

`conversation_problems` is the cheap structural check the dataset runs over every record before
training; `check_file` adds opening every image and measuring every sample's tokens
(`wings data check`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from wings.data.formats import IMAGE_PLACEHOLDER, Conversation, RecordError, RecordFile, normalize_record
from wings.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, ImageSource, load_image


class ConversationProcessor(Protocol):
    """What the data layer asks of a processor, which it receives as an argument (the processor sits above the data
    layer and imports it; `WingsProcessor` is one)."""

    tokenizer: Any
    image_seq_length: int  # tokens each image takes in the sequence

    def render(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """The conversation as text through the chat template, image placeholders kept."""

    def encode_conversation(
        self,
        messages: Sequence[dict[str, str]],
        images: Sequence[ImageSource] = (),
        max_length: int | None = None,
        add_generation_prompt: bool = False,
    ) -> dict[str, Any]:
        """One sample's model inputs; raises `SampleDropped` when the sample cannot fit `max_length`."""


class SampleDropped(ValueError):
    """A sample that cannot be fitted into `max_length` (its images alone are too long, or no answer is left)."""


@dataclass(frozen=True)
class Problem:
    """One problem in one record: `kind` groups problems for counting, `field` says where it is."""

    index: int
    field: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"record {self.index}: {self.field}: {self.message}"


# Problem kinds, in the order a report lists their counts.
PROBLEM_KINDS = (
    "format",
    "placeholders",
    "roles",
    "empty turn",
    "missing image",
    "unreadable image",
    "too long",
)


def conversation_problems(conversation: Conversation, check_image_files: bool = True) -> list[Problem]:
    """Structural problems: placeholder count vs images, role order, empty turns, image files present."""
    problems: list[Problem] = []
    index = conversation.index

    def add(field_name: str, kind: str, message: str) -> None:
        problems.append(Problem(index, field_name, kind, message))

    placeholders = conversation.num_placeholders
    if placeholders != len(conversation.images):
        add(
            conversation.images_field,
            "placeholders",
            f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) in the text but {len(conversation.images)} image(s); "
            f"put one {IMAGE_PLACEHOLDER} in the text where each image goes",
        )
    expected = "user"
    for position, message in enumerate(conversation.messages):
        where = conversation.message_fields[position] if conversation.message_fields else f"messages[{position}]"
        if message.role == "system":
            if position != 0:
                add(where, "roles", "a system message is only allowed first")
            continue
        if message.role != expected:
            add(where, "roles", f"roles do not alternate: expected {expected}, got {message.role}")
        expected = "assistant" if message.role == "user" else "user"
        if not message.content.strip():
            add(where, "empty turn", f"empty {message.role} turn")
    turns = [message for message in conversation.messages if message.role != "system"]
    if not turns:
        add("<record>", "roles", "no user/assistant turns")
    elif turns[-1].role != "assistant":
        add(
            conversation.message_fields[-1] if conversation.message_fields else "<record>",
            "roles",
            "the last turn is not the assistant's: there is no answer to learn; remove it or add the answer",
        )
    if check_image_files:
        for image, where in zip(conversation.images, conversation.image_fields):
            if not image.startswith(("data:", "http://", "https://")) and not os.path.isfile(
                image.removeprefix("file://")
            ):
                add(where, "missing image", f"image file not found: {image}; check the path or --image-folder")
    return problems


@dataclass
class CheckReport:
    """What `check_file` found: counts and the problems, each by record and field."""

    path: str
    records: int = 0
    with_images: int = 0
    text_only: int = 0
    images: int = 0
    assistant_turns: int = 0
    longest_tokens: int | None = None
    problems: list[Problem] = field(default_factory=list)
    length_checked: bool = False

    @property
    def invalid_records(self) -> int:
        return len({problem.index for problem in self.problems})

    def counts_by_kind(self) -> Counter:
        return Counter(problem.kind for problem in self.problems)

    def format(self) -> str:
        """A human-readable report: counts first, then every problem."""
        lines = [
            f"{self.path}",
            f"  records: {self.records} ({self.with_images} with images, {self.text_only} text-only)",
            f"  images: {self.images}, assistant turns: {self.assistant_turns}",
        ]
        if self.length_checked:
            lines.append(f"  longest sample: {self.longest_tokens} tokens")
        else:
            lines.append("  lengths: not checked (give --processor DIR and --max-length N)")
        counts = self.counts_by_kind()
        if not self.problems:
            lines.append("  no problems found")
        else:
            lines.append(
                f"  {len(self.problems)} problem(s) in {self.invalid_records} record(s): "
                + ", ".join(f"{kind} {counts[kind]}" for kind in PROBLEM_KINDS if counts[kind])
            )
            lines.extend(f"  {problem}" for problem in self.problems)
        return "\n".join(lines)


def check_file(
    path: str | os.PathLike,
    image_folder: str | os.PathLike | None = None,
    processor: ConversationProcessor | None = None,
    max_length: int | None = None,
    open_images: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> CheckReport:
    """Validate a whole file: formats, placeholders, roles, empty turns, images, and (with a processor) lengths.

    Images resolve against `image_folder` (default: the file's folder). Each distinct image is
    opened once; a processor and `max_length` add the token-length check.
    """
    records = RecordFile(path)
    folder = Path(path).parent if image_folder is None else image_folder
    report = CheckReport(path=os.fspath(path), records=len(records))
    opened: dict[str, str | None] = {}  # image path -> error message (None: fine)
    length_checked = processor is not None and max_length is not None
    for index in range(len(records)):
        try:
            conversation = normalize_record(records.record(index), folder, records.path, index)
        except RecordError as error:
            report.problems.append(Problem(index, error.field, "format", error.reason))
            continue
        report.images += len(conversation.images)
        report.with_images += bool(conversation.images)
        report.text_only += not conversation.images
        report.assistant_turns += sum(message.role == "assistant" for message in conversation.messages)
        problems = conversation_problems(conversation)
        missing = {problem.field for problem in problems if problem.kind == "missing image"}
        if open_images:
            for image, where in zip(conversation.images, conversation.image_fields):
                if where in missing:
                    continue
                if image not in opened:
                    opened[image] = _image_error(image, max_pixels)
                if opened[image] is not None:
                    problems.append(Problem(index, where, "unreadable image", opened[image]))
        if length_checked and not problems:
            problems.extend(_length_problems(conversation, processor, max_length, report))
        report.problems.extend(problems)
    report.length_checked = length_checked
    return report


def _image_error(image: str, max_pixels: int) -> str | None:
    try:
        load_image(image, max_pixels)
    except ImageLoadError as error:
        return str(error)
    return None


def _length_problems(
    conversation: Conversation, processor: ConversationProcessor, max_length: int, report: CheckReport
) -> list[Problem]:
    """Token length of the sample as the processor builds it (images expanded), against `max_length`."""
    chat = conversation.to_chat()
    rendered = processor.render(chat)
    tokens = processor.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    length = len(tokens) + len(conversation.images) * (processor.image_seq_length - 1)
    report.longest_tokens = max(report.longest_tokens or 0, length)
    if length <= max_length:
        return []
    image_tokens = len(conversation.images) * processor.image_seq_length
    if image_tokens > max_length:
        message = (
            f"its {len(conversation.images)} image(s) alone take {image_tokens} tokens > max_length "
            f"{max_length}: the sample would be dropped"
        )
    else:
        message = f"{length} tokens > max_length {max_length}: the sample would be truncated"
    return [Problem(conversation.index, "<record>", "too long", message)]
