"""Conversation formats: LLaVA, LLaMA-Factory "messages", OpenAI content parts; JSON and JSONL; indexing."""

from __future__ import annotations

import json

import pytest

from wings.data.formats import (
    Conversation,
    Message,
    RecordError,
    RecordFile,
    normalize_record,
    read_conversations,
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
            {"role": "user", "content": [
                {"type": "text", "text": "Compare "},
                {"type": "image_url", "image_url": {"url": "x.png"}},
                {"type": "text", "text": " with "},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ]},
            {"role": "assistant", "content": [{"type": "text", "text": "Same."}]},
        ]
    }
    conversation = normalize_record(record, "/img")
    assert conversation.messages[0].content == "Compare <image> with <image>"
    assert conversation.images == ["/img/x.png", "data:image/png;base64,AAAA"]
    assert conversation.image_fields == ["messages[0].content[1]", "messages[0].content[3]"]


@pytest.mark.parametrize(
    "record, message",
    [
        ([1], "record 4: <record>: expected a JSON object, got list"),
        ({"foo": 1}, "record 4: <record>: no 'conversations' (LLaVA) or 'messages' (LLaMA-Factory/OpenAI) field"),
        ({"conversations": [{"from": "alien", "value": "x"}]}, "record 4: conversations[0].from: unknown role 'alien'"),
        ({"conversations": [{"from": "human"}]}, "record 4: conversations[0]: expected an object with 'from' and 'value'"),
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
        Conversation([Message("user", "<image>\nQ? {not json] \"quoted\" é"), Message("assistant", "A.")],
                     images=[str(tmp_path / "a.png")], id="0"),
        Conversation([Message("system", "S"), Message("user", "Hi"), Message("assistant", "Hello")], id="1"),
        Conversation([Message("user", "<image><image>"), Message("assistant", "two")],
                     images=[str(tmp_path / "a.png"), str(tmp_path / "b.png")], id="2"),
    ]
    path = tmp_path / f"data{suffix}"
    write_conversations(conversations, path, style=style)
    loaded = read_conversations(path)
    assert [c.messages for c in loaded] == [c.messages for c in conversations]
    assert [c.images for c in loaded] == [c.images for c in conversations]
    if style == "llava":
        assert [c.id for c in loaded] == ["0", "1", "2"]


def test_record_file_indexes_json_arrays_with_tricky_strings(tmp_path):
    records = [{"messages": [{"role": "user", "content": s}]} for s in ['{"[', "]}\\", "\\\"}]", "ünï{cödé}"]]
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
    truncated.write_text(' [ ] ')
    assert len(RecordFile(truncated)) == 0
    with pytest.raises(FileNotFoundError, match="data file not found"):
        RecordFile(tmp_path / "absent.json")


@pytest.mark.parametrize("suffix, line", [(".jsonl", 2), (".json", 3)])
def test_bytes_that_are_not_utf8_name_file_record_and_line(tmp_path, suffix, line):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    bad = good.replace("yo", "caf\u00e9").encode("utf-8").replace("é".encode("utf-8"), b"\xe9")  # Latin-1 é
    path = tmp_path / f"latin1{suffix}"
    if suffix == ".jsonl":
        path.write_bytes(good.encode() + b"\n" + bad + b"\n" + good.encode() + b"\n")
    else:
        path.write_bytes(b"[\n" + good.encode() + b",\n" + bad + b",\n" + good.encode() + b"\n]")
    records = RecordFile(path)
    assert len(records) == 3 and records.record(2) == records.record(0)
    with pytest.raises(RecordError, match=rf"^{path}: record 1: <record>: line {line}: not UTF-8 text \(byte 0xe9 .*"
                                          r"re-encode the file as UTF-8 or skip such records"):
        records.record(1)
