"""`check_file`: every problem by record index and field, with its message."""

from __future__ import annotations

import json

from PIL import Image

from wings.data.validation import check_file


def write(tmp_path, records, name="data.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return str(path)


def turn(speaker, value):
    return {"from": speaker, "value": value}


def test_every_problem_is_reported_by_record_and_field(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"garbage")
    records = [
        {"image": "ok.png", "conversations": [turn("human", "<image>\nQ"), turn("gpt", "A")]},  # fine
        {"image": "ok.png", "conversations": [turn("human", "Q"), turn("gpt", "A")]},
        {"image": "missing.png", "conversations": [turn("human", "<image>Q"), turn("gpt", "A")]},
        {"image": "bad.png", "conversations": [turn("human", "<image>Q"), turn("gpt", "A")]},
        {"conversations": [turn("human", "Q"), turn("human", "Q2"), turn("gpt", "A")]},
        {"conversations": [turn("human", "Q"), turn("gpt", "  ")]},
        {"conversations": [turn("human", "Q"), turn("gpt", "A"), turn("human", "more?")]},
        {"conversations": [turn("human", "Q"), turn("gpt", "A"), turn("system", "late")]},
        {"conversations": [turn("robot", "Q")]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},  # fine, text-only
    ]
    path = write(tmp_path, records)
    report = check_file(path)
    found = [str(problem) for problem in report.problems]
    assert found == [
        "record 1: image: 0 <image> placeholder(s) in the text but 1 image(s); "
        "put one <image> in the text where each image goes",
        f"record 2: image: image file not found: {tmp_path}/missing.png; check the path or --image-folder",
        f"record 3: image: {tmp_path}/bad.png: not a readable image file "
        "(corrupt or not an image; accepted formats: PNG, JPEG, WebP, GIF or BMP)",
        "record 4: conversations[1]: roles do not alternate: expected assistant, got user",
        "record 5: conversations[1]: empty assistant turn",
        "record 6: conversations[2]: the last turn is not the assistant's: there is no answer to learn; "
        "remove it or add the answer",
        "record 7: conversations[2]: a system message is only allowed first",
        "record 8: conversations[0].from: unknown role 'robot'; "
        "use one of assistant, bot, chatgpt, gpt, human, model, system, user",
    ]
    assert (report.records, report.with_images, report.text_only, report.images) == (10, 4, 5, 4)
    assert report.invalid_records == 8  # one problem per deviation: after "user, user" an assistant turn is fine again
    text = report.format()
    assert "  records: 10 (4 with images, 5 text-only)" in text
    assert (
        "8 problem(s) in 8 record(s): format 1, placeholders 1, roles 3, empty turn 1, "
        "missing image 1, unreadable image 1" in text
    )


def test_too_long_samples_with_a_processor(tmp_path, chatml_processor):
    Image.new("RGB", (4, 4)).save(tmp_path / "ok.png")
    records = [
        {"conversations": [turn("human", "Q"), turn("gpt", "A")]},
        {"conversations": [turn("human", "Q " * 40), turn("gpt", "A")]},
        {"image": ["ok.png"] * 3, "conversations": [turn("human", "<image>" * 3), turn("gpt", "A")]},
    ]
    report = check_file(write(tmp_path, records), processor=chatml_processor, max_length=40)
    messages = [str(problem) for problem in report.problems]
    assert len(messages) == 2
    assert messages[0].startswith("record 1: <record>: ") and messages[0].endswith(
        " tokens > max_length 40: the sample would be truncated"
    )
    assert messages[1] == (
        "record 2: <record>: its 3 image(s) alone take 48 tokens > max_length 40: the sample would be dropped"
    )
    assert report.length_checked and report.longest_tokens > 48
