"""Conversation formats: LLaVA, LLaMA-Factory "messages", OpenAI content parts; JSON and JSONL; indexing."""

from __future__ import annotations

import json

import pytest

from wings.data.formats import (
    ContentPartError,
    Conversation,
    Message,
    RecordError,
    RecordFile,
    content_parts,
    normalize_record,
    read_conversations,
    read_jsonl,
    required_field,
    write_conversations,
)

LLAVA = {
    "id": "7",
    "image": "a.png",
    "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "<image>\nWhat?"},
        {"from": "gpt", "value": "A cat."},
    ],
}
MESSAGES = {
    "messages": [
        {"role": "user", "content": "<image>Who?"},
        {"role": "assistant", "content": "Kane."},
        {"role": "user", "content": "And<image>?"},
        {"role": "assistant", "content": "Gretzka."},
    ],
    "images": ["1.jpg", "2.jpg"],
}


def test_llava_record(tmp_path):
    conversation = normalize_record(LLAVA, tmp_path, "f.json", 3)
    assert [m.role for m in conversation.messages] == ["system", "user", "assistant"]
    assert conversation.images == [str(tmp_path / "a.png")]
    assert conversation.image_fields == ["image"] and conversation.message_fields[1] == "conversations[1]"
    assert (conversation.id, conversation.index, conversation.source) == ("7", 3, "f.json")
    listed = normalize_record({**LLAVA, "image": ["a.png", "/abs/b.png"]}, tmp_path)
    assert listed.images == [str(tmp_path / "a.png"), "/abs/b.png"] and listed.image_fields == ["image[0]", "image[1]"]


def test_messages_record_and_text_only():
    conversation = normalize_record(MESSAGES, "/img")
    assert conversation.images == ["/img/1.jpg", "/img/2.jpg"] and conversation.num_placeholders == 2
    text_only = normalize_record({"messages": MESSAGES["messages"][:2]})
    assert text_only.images == [] and text_only.to_chat()[1] == {"role": "assistant", "content": "Kane."}


def test_openai_content_parts_become_placeholders_in_place():
    record = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare "},
                    {"type": "image_url", "image_url": {"url": "x.png"}},
                    {"type": "text", "text": " with "},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Same."}]},
        ]
    }
    conversation = normalize_record(record, "/img")
    assert conversation.messages[0].content == "Compare <image> with <image>"
    assert conversation.images == ["/img/x.png", "data:image/png;base64,AAAA"]
    assert conversation.image_fields == ["messages[0].content[1]", "messages[0].content[3]"]


@pytest.mark.parametrize(
    "part, message",
    [
        ({"type": "text"}, "messages[1].content[0]: a text part needs a 'text' string"),
        (
            {"type": "image_url", "image_url": {}},
            "messages[1].content[0]: an image_url part needs a URL or path string",
        ),
        ({"type": "audio"}, "messages[1].content[0]: expected {'type': 'text'|'image_url'|'image', ...}"),
    ],
)
def test_a_malformed_content_part_names_its_field_for_every_reader(part, message):
    with pytest.raises(ContentPartError) as error:
        list(content_parts([part], "messages[1].content"))
    assert str(error.value).startswith(message) and error.value.field == "messages[1].content[0]"
    with pytest.raises(RecordError) as error:  # a data file reports it as its record's field
        normalize_record(
            {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": [part]}]}, None, "data.json", 2
        )
    assert str(error.value).startswith(f"data.json: record 2: {message}")


def test_content_parts_give_kind_value_and_field_in_order():
    parts = [
        {"type": "image", "image": "a.png"},
        {"type": "text", "text": "Hi"},
        {"type": "image_url", "image_url": "b.png"},
    ]
    assert list(content_parts(parts, "content")) == [
        ("image", "a.png", "content[0]"),
        ("text", "Hi", "content[1]"),
        ("image", "b.png", "content[2]"),
    ]


def test_read_jsonl_skips_blank_lines_and_names_a_bad_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"q\.jsonl:2: not valid JSON .*; fix or remove that line"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"q\.jsonl:2: expected a JSON object, got list"):
        read_jsonl(path)


def test_a_missing_required_field_names_the_place_and_the_fields_present():
    assert required_field({"q": 1}, "q", "f.jsonl record 3") == 1
    with pytest.raises(ValueError, match=r"^f\.jsonl record 3: missing field 'answer' \(fields present: \['q'\]\)$"):
        required_field({"q": 1}, "answer", "f.jsonl record 3")


@pytest.mark.parametrize(
    "record, message",
    [
        ([1], "record 4: <record>: expected a JSON object, got list"),
        ({"foo": 1}, "record 4: <record>: no 'conversations' (LLaVA) or 'messages' (LLaMA-Factory/OpenAI) field"),
        ({"conversations": [{"from": "alien", "value": "x"}]}, "record 4: conversations[0].from: unknown role 'alien'"),
        (
            {"conversations": [{"from": "human"}]},
            "record 4: conversations[0]: expected an object with 'from' and 'value'",
        ),
        ({"messages": [{"role": "user", "content": 3}]}, "record 4: messages[0].content: expected a string or a list"),
        ({"conversations": [], "image": 5}, "record 4: image: expected a path or a list of paths"),
    ],
)
def test_unreadable_records_name_file_record_and_field(record, message):
    with pytest.raises(RecordError) as error:
        normalize_record(record, None, "data.json", 4)
    assert str(error.value).startswith(f"data.json: {message}")


@pytest.mark.parametrize("style", ["llava", "messages"])
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_round_trip_through_files(tmp_path, style, suffix):
    conversations = [
        Conversation(
            [Message("user", '<image>\nQ? {not json] "quoted" é'), Message("assistant", "A.")],
            images=[str(tmp_path / "a.png")],
            id="0",
        ),
        Conversation([Message("system", "S"), Message("user", "Hi"), Message("assistant", "Hello")], id="1"),
        Conversation(
            [Message("user", "<image><image>"), Message("assistant", "two")],
            images=[str(tmp_path / "a.png"), str(tmp_path / "b.png")],
            id="2",
        ),
    ]
    path = tmp_path / f"data{suffix}"
    write_conversations(conversations, path, style=style)
    loaded = read_conversations(path)
    assert [c.messages for c in loaded] == [c.messages for c in conversations]
    assert [c.images for c in loaded] == [c.images for c in conversations]
    if style == "llava":
        assert [c.id for c in loaded] == ["0", "1", "2"]


def test_record_file_indexes_json_arrays_with_tricky_strings(tmp_path):
    records = [{"messages": [{"role": "user", "content": s}]} for s in ['{"[', "]}\\", '\\"}]', "ünï{cödé}"]]
    path = tmp_path / "tricky.json"
    path.write_text("\ufeff  [\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n", "utf-8")
    index = RecordFile(path)
    assert len(index) == 4 and [index.record(i) for i in range(4)] == records
    assert list(reversed([index.record(i) for i in reversed(range(4))])) == records  # random access


def test_record_file_errors(tmp_path):
    lines = tmp_path / "broken.jsonl"
    lines.write_text('{"messages": []}\n\n{"messages": [oops]}\n')
    index = RecordFile(lines)
    assert len(index) == 2  # blank lines are not records
    with pytest.raises(RecordError, match=rf"^{lines}: record 1: <record>: line 3: invalid JSON"):
        index.record(1)
    truncated = tmp_path / "cut.json"
    truncated.write_text('[{"messages": []}, {"messages": [')
    with pytest.raises(ValueError, match=rf"^{truncated}: record 1: invalid JSON: Expecting value"):
        RecordFile(truncated)
    truncated.write_text('[{"messages": []}, {"messages": []}')
    with pytest.raises(ValueError, match=r"the JSON array is not closed after record 1 \(truncated file\?\)$"):
        RecordFile(truncated)
    truncated.write_text('[{"messages": []}, 3]')
    with pytest.raises(ValueError, match="record 1 is not a JSON object"):
        RecordFile(truncated)
    truncated.write_text(" [ ] ")
    assert len(RecordFile(truncated)) == 0
    with pytest.raises(FileNotFoundError, match="data file not found"):
        RecordFile(tmp_path / "absent.json")


@pytest.mark.parametrize("suffix, line", [(".jsonl", 2), (".json", 3)])
def test_bytes_that_are_not_utf8_name_file_record_and_line(tmp_path, suffix, line):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    bad = good.replace("yo", "caf\u00e9").encode("utf-8").replace("é".encode(), b"\xe9")  # Latin-1 é
    path = tmp_path / f"latin1{suffix}"
    if suffix == ".jsonl":
        path.write_bytes(good.encode() + b"\n" + bad + b"\n" + good.encode() + b"\n")
    else:
        path.write_bytes(b"[\n" + good.encode() + b",\n" + bad + b",\n" + good.encode() + b"\n]")
    records = RecordFile(path)
    assert len(records) == 3 and records.record(2) == records.record(0)
    with pytest.raises(
        RecordError,
        match=rf"^{path}: record 1: <record>: line {line}: not UTF-8 text \(byte 0xe9 .*"
        r"re-encode the file as UTF-8 or skip such records",
    ):
        records.record(1)
