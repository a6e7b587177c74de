"""Conversation files: one internal `Conversation` type and readers for the formats in the wild.

Supported record shapes (JSON array or JSON Lines, detected from the first character):

- LLaVA: ``{"id", "image": path | [paths], "conversations": [{"from": "human"|"gpt"|"system", "value"}]}``
- LLaMA-Factory "messages": ``{"messages": [{"role", "content"}], "images": [paths]}``
- OpenAI content parts: ``"content": [{"type": "text", "text"}, {"type": "image_url", "image_url": {"url"}}]``
  (each image part becomes a placeholder where it stands)

Text in every format marks each image's place with the placeholder ``<image>``. Files are indexed
by byte offset (`RecordFile`), so a 665K-record file costs a few MB of memory, not its parsed size.

The names every layer shares are defined here, the lowest layer: `IMAGE_PLACEHOLDER`, `IGNORE_INDEX`,
`read_jsonl` (small JSON Lines files, whole), `required_field` and `content_parts` (OpenAI content parts).
"""

from __future__ import annotations

import json
import mmap
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_PLACEHOLDER = "<image>"
# The label of a position that is not learned (PyTorch's cross-entropy default `ignore_index`).
IGNORE_INDEX = -100

# Speaker names seen in LLaVA / ShareGPT / OpenAI files, mapped to chat-template roles.
ROLE_ALIASES: dict[str, str] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
    "system": "system",
}


class RecordError(ValueError):
    """A record that cannot be read as a conversation; the message names file, record and field."""

    def __init__(self, source: str, index: int, field_name: str, message: str):
        self.source, self.index, self.field, self.reason = source, index, field_name, message
        super().__init__(f"{source}: record {index}: {field_name}: {message}")


@dataclass
class Message:
    """One turn: `role` is "system", "user" or "assistant"; images are `<image>` placeholders in `content`."""

    role: str
    content: str


@dataclass
class Conversation:
    """A normalised sample: messages, the images their placeholders refer to (in order), and provenance.

    `message_fields` / `image_fields` hold each item's field path in the source record
    (e.g. ``conversations[2]``, ``images[0]``) so that problems can be reported where they are.
    """

    messages: list[Message]
    images: list[str] = field(default_factory=list)
    source: str = "<memory>"
    index: int = -1
    id: str | None = None
    message_fields: list[str] = field(default_factory=list)
    image_fields: list[str] = field(default_factory=list)
    images_field: str = "images"

    def to_chat(self) -> list[dict[str, str]]:
        """Messages as the dicts a chat template expects."""
        return [{"role": message.role, "content": message.content} for message in self.messages]

    @property
    def num_placeholders(self) -> int:
        return sum(message.content.count(IMAGE_PLACEHOLDER) for message in self.messages)

    @property
    def num_text_chars(self) -> int:
        return sum(len(message.content) for message in self.messages)


def resolve_image(path: str, image_folder: str | os.PathLike | None) -> str:
    """Resolve a relative image path against the image folder; absolute paths and URLs pass through."""
    if path.startswith(("data:", "http://", "https://", "file://")) or os.path.isabs(path) or image_folder is None:
        return path
    return os.path.join(os.fspath(image_folder), path)


def normalize_record(
    record: Any, image_folder: str | os.PathLike | None = None, source: str = "<memory>", index: int = -1
) -> Conversation:
    """Turn one record of any supported format into a `Conversation`; raise `RecordError` if impossible."""
    if not isinstance(record, dict):
        raise RecordError(source, index, "<record>", f"expected a JSON object, got {type(record).__name__}")
    record_id = record.get("id")
    record_id = None if record_id is None else str(record_id)
    if "conversations" in record:
        conversation = _from_llava(record, source, index)
    elif "messages" in record:
        conversation = _from_messages(record, source, index)
    else:
        raise RecordError(
            source, index, "<record>", "no 'conversations' (LLaVA) or 'messages' (LLaMA-Factory/OpenAI) field"
        )
    conversation.images = [resolve_image(path, image_folder) for path in conversation.images]
    conversation.source, conversation.index, conversation.id = source, index, record_id
    return conversation


def _role(value: Any, source: str, index: int, field_name: str) -> str:
    role = ROLE_ALIASES.get(str(value).lower()) if isinstance(value, str) else None
    if role is None:
        known = ", ".join(sorted(ROLE_ALIASES))
        raise RecordError(source, index, field_name, f"unknown role {value!r}; use one of {known}")
    return role


def _image_list(record: dict, key: str, source: str, index: int) -> list[str]:
    value = record.get(key)
    if value is None:
        return []
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(item, str) for item in values):
        raise RecordError(source, index, key, "expected a path or a list of paths")
    return list(values)


def _from_llava(record: dict, source: str, index: int) -> Conversation:
    turns = record["conversations"]
    if not isinstance(turns, list):
        raise RecordError(source, index, "conversations", "expected a list of {from, value} turns")
    messages, fields = [], []
    for position, turn in enumerate(turns):
        where = f"conversations[{position}]"
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RecordError(source, index, where, "expected an object with 'from' and 'value'")
        if not isinstance(turn["value"], str):
            raise RecordError(source, index, f"{where}.value", "expected a string")
        messages.append(Message(_role(turn["from"], source, index, f"{where}.from"), turn["value"]))
        fields.append(where)
    images_key = "image" if "image" in record else "images"
    images = _image_list(record, images_key, source, index)
    image_fields = [
        images_key if isinstance(record.get(images_key), str) else f"{images_key}[{i}]" for i in range(len(images))
    ]
    return Conversation(messages, images, message_fields=fields, image_fields=image_fields, images_field=images_key)


def _from_messages(record: dict, source: str, index: int) -> Conversation:
    turns = record["messages"]
    if not isinstance(turns, list):
        raise RecordError(source, index, "messages", "expected a list of {role, content} messages")
    listed_images = _image_list(record, "images", source, index)
    messages, fields, part_images, part_fields = [], [], [], []
    for position, turn in enumerate(turns):
        where = f"messages[{position}]"
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise RecordError(source, index, where, "expected an object with 'role' and 'content'")
        content = turn["content"]
        if isinstance(content, list):
            content = _content_parts_to_text(content, part_images, part_fields, source, index, f"{where}.content")
        elif not isinstance(content, str):
            raise RecordError(source, index, f"{where}.content", "expected a string or a list of content parts")
        messages.append(Message(_role(turn["role"], source, index, f"{where}.role"), content))
        fields.append(where)
    if part_images and listed_images:
        raise RecordError(source, index, "images", "images are given both as content parts and in 'images'; use one")
    if part_images:
        return Conversation(messages, part_images, message_fields=fields, image_fields=part_fields)
    image_fields = [f"images[{i}]" for i in range(len(listed_images))]
    return Conversation(messages, listed_images, message_fields=fields, image_fields=image_fields)


class ContentPartError(ValueError):
    """A malformed OpenAI content part; `field` is its path (e.g. ``messages[0].content[2]``)."""

    def __init__(self, field_name: str, reason: str):
        self.field, self.reason = field_name, reason
        super().__init__(f"{field_name}: {reason}")


def content_parts(parts: list, where: str) -> Iterator[tuple[str, str, str]]:
    """OpenAI-style content parts, read the one way every reader shares: ``(kind, value, field)`` per part, where
    `kind` is "text" (value: the text) or "image" (value: the URL or path of an ``image_url`` / ``image`` part) and
    `field` is the part's path under `where`. A malformed part raises `ContentPartError` naming its field."""
    for position, part in enumerate(parts):
        part_field = f"{where}[{position}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ContentPartError(part_field, "a text part needs a 'text' string")
            yield "text", part["text"], part_field
        elif kind in ("image_url", "image"):
            value = part.get(kind)
            url = value.get("url") if isinstance(value, dict) else value
            if not isinstance(url, str):
                raise ContentPartError(
                    part_field, f"an {kind} part needs a URL or path string, e.g. {{'{kind}': {{'url': ...}}}}"
                )
            yield "image", url, part_field
        else:
            raise ContentPartError(part_field, "expected {'type': 'text'|'image_url'|'image', ...}")


def _content_parts_to_text(
    parts: list, images: list[str], image_fields: list[str], source: str, index: int, where: str
) -> str:
    """OpenAI-style parts -> text with a placeholder where each image part stands."""
    pieces = []
    try:
        for kind, value, part_field in content_parts(parts, where):
            if kind == "image":
                images.append(value)
                image_fields.append(part_field)
                value = IMAGE_PLACEHOLDER
            pieces.append(value)
    except ContentPartError as error:
        raise RecordError(source, index, error.field, error.reason) from None
    return "".join(pieces)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every JSON object of a small JSON Lines file (blank lines skipped); a bad line is an error naming the file and
    the line. Large training files are read record by record with `RecordFile` instead."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{path}:{line_number}: not valid JSON ({error.msg}); fix or remove that line"
                ) from error
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    return records


def required_field(record: dict[str, Any], key: str, where: str) -> Any:
    """`record[key]`, or an error naming `where` (file and record), the missing field and the fields present."""
    if key not in record:
        raise ValueError(f"{where}: missing field '{key}' (fields present: {sorted(record)})")
    return record[key]


_SPACE = re.compile(r"\s*")


class RecordFile:
    """Random access to the records of a JSON array or JSON Lines file, by byte offsets.

    Only the offsets are kept in memory; `record(i)` reads and parses one record. Reads use
    `os.pread`, which is safe in forked data loader workers.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: data file not found")
        self.starts, self.ends = self._index()
        self._fd: int | None = None
        self._fd_pid: int | None = None

    def __len__(self) -> int:
        return len(self.starts)

    def raw(self, index: int) -> bytes:
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd, self._fd_pid = os.open(self.path, os.O_RDONLY), os.getpid()
        start, end = int(self.starts[index]), int(self.ends[index])
        return os.pread(self._fd, end - start, start)

    def record(self, index: int) -> Any:
        """The parsed record; `RecordError` (file, index, line) if it is not UTF-8 or not valid JSON."""
        raw = self.raw(index)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise RecordError(
                self.path,
                index,
                "<record>",
                f"line {self.line(index)}: not UTF-8 text (byte {raw[error.start]:#04x} at position {error.start} of "
                "the record); re-encode the file as UTF-8 or skip such records (--skip-invalid-samples)",
            ) from error
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise RecordError(
                self.path, index, "<record>", f"line {self.line(index)}: invalid JSON: {error}"
            ) from error
        except RecursionError as error:
            raise RecordError(
                self.path, index, "<record>", f"line {self.line(index)}: JSON nests too deeply"
            ) from error

    def line(self, index: int) -> int:
        """The 1-based line of the file where record `index` starts (read only when reporting an error)."""
        start = int(self.starts[index])
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd, self._fd_pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return os.pread(self._fd, start, 0).count(b"\n") + 1

    def __iter__(self) -> Iterator[Any]:
        return (self.record(index) for index in range(len(self)))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_fd_pid": None}  # file descriptors do not pickle

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        if os.path.getsize(self.path) == 0:
            raise ValueError(f"{self.path}: file is empty")
        with open(self.path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            first = re.compile(rb"\s*(?:\xef\xbb\xbf)?\s*(.)", re.DOTALL).match(data)
            opener = first.group(1) if first else b""
            if opener == b"[":  # bytes that are not UTF-8 survive indexing; `record` reports them (skippable)
                return self._index_array(data[:].decode("utf-8", errors="surrogateescape"))
            if opener == b"{":
                return self._index_lines(data)
        raise ValueError(f"{self.path}: neither a JSON array nor JSON Lines (starts with {opener!r})")

    def _index_lines(self, data: mmap.mmap) -> tuple[np.ndarray, np.ndarray]:
        starts, ends, offset = [], [], 0
        for line in iter(data.readline, b""):
            if line.strip():
                starts.append(offset)
                ends.append(offset + len(line))
            offset += len(line)
        return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)

    def _index_array(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Parse record by record with the C JSON scanner, keeping only each record's byte range.

        The file's text is held once while indexing (about its size in memory), never its parsed records.
        """
        decoder = json.JSONDecoder()
        is_ascii = text.isascii()
        starts, ends = [], []
        byte_position, char_position = 0, 0  # for non-ASCII text: bytes before `char_position`

        def to_bytes(char: int) -> int:
            nonlocal byte_position, char_position
            if is_ascii:
                return char
            byte_position += len(text[char_position:char].encode("utf-8", errors="surrogateescape"))
            char_position = char
            return byte_position

        position = _SPACE.match(text, text.index("[") + 1).end()
        if text.startswith("]", position):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        while True:
            if not text.startswith("{", position):
                raise ValueError(f"{self.path}: record {len(starts)} is not a JSON object (at character {position})")
            try:
                _, end = decoder.raw_decode(text, position)
            except json.JSONDecodeError as error:
                raise ValueError(f"{self.path}: record {len(starts)}: invalid JSON: {error}") from error
            starts.append(to_bytes(position))
            ends.append(to_bytes(end))
            position = _SPACE.match(text, end).end()
            if text.startswith(",", position):
                position = _SPACE.match(text, position + 1).end()
            elif text.startswith("]", position):
                return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
            else:
                raise ValueError(
                    f"{self.path}: the JSON array is not closed after record {len(starts) - 1} (truncated file?)"
                )


def read_conversations(path: str | os.PathLike, image_folder: str | os.PathLike | None = None) -> list[Conversation]:
    """Load a whole (small) file as conversations; images resolve against `image_folder` (default: the file's
    folder)."""
    records = RecordFile(path)
    folder = Path(path).parent if image_folder is None else image_folder
    return [normalize_record(records.record(i), folder, records.path, i) for i in range(len(records))]


def write_conversations(conversations: list[Conversation], path: str | os.PathLike, style: str = "llava") -> None:
    """Write conversations as LLaVA ("conversations") or LLaMA-Factory ("messages") JSON; `.jsonl` writes lines."""
    records = [conversation_to_record(conversation, style) for conversation in conversations]
    with open(path, "w", encoding="utf-8") as handle:
        if os.fspath(path).endswith(".jsonl"):
            handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        else:
            json.dump(records, handle, ensure_ascii=False, indent=1)


def conversation_to_record(conversation: Conversation, style: str = "llava") -> dict:
    """The inverse of `normalize_record` for the LLaVA and "messages" styles."""
    if style == "llava":
        speaker = {"user": "human", "assistant": "gpt", "system": "system"}
        record: dict[str, Any] = {} if conversation.id is None else {"id": conversation.id}
        if conversation.images:
            record["image"] = conversation.images[0] if len(conversation.images) == 1 else list(conversation.images)
        record["conversations"] = [{"from": speaker[m.role], "value": m.content} for m in conversation.messages]
        return record
    if style == "messages":
        record = {"messages": conversation.to_chat()}
        if conversation.images:
            record["images"] = list(conversation.images)
        return record
    raise ValueError(f"unknown style {style!r}; use 'llava' or 'messages'")
