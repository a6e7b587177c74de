"""easy-VQA conversion: several Q/A turns per image, train and test splits, answer types."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from wings.data.easy_vqa import convert_easy_vqa
from wings.data.formats import read_conversations
from wings.data.validation import check_file


@pytest.fixture
def fake_easy_vqa(tmp_path):
    """The package's data layout in miniature: answers.txt, {train,test}/questions.json and images/."""
    source = tmp_path / "easy_vqa_data"
    (source / "answers.txt").parent.mkdir()
    (source / "answers.txt").write_text("circle\nred\nyes\nno\n")
    questions = {
        "train": [
            ["what shape?", "circle", 0],
            ["is it red?", "yes", 0],
            ["is it blue?", "no", 0],
            ["what colour?", "red", 1],
        ],
        "test": [["what shape is it?", "circle", 0], ["is there a circle?", "yes", 0]],
    }
    for split, rows in questions.items():
        (source / split / "images").mkdir(parents=True)
        (source / split / "questions.json").write_text(json.dumps(rows))
        for image_id in {row[2] for row in rows}:
            Image.new("RGB", (64, 64), (255, 0, 0)).save(source / split / "images" / f"{image_id}.png")
    return source


def test_conversion_layout_and_turns(tmp_path, fake_easy_vqa):
    out = tmp_path / "out"
    counts = convert_easy_vqa(out, data_dir=fake_easy_vqa)
    assert counts["train"] == {"images": 2, "questions": 4, "yes_no_questions": 2, "conversations": 2}
    assert counts["test"] == {"images": 1, "questions": 2, "yes_no_questions": 1, "conversations": 1}
    train = read_conversations(out / "train.json")
    assert [len(c.messages) for c in train] == [6, 2]  # all of an image's questions in one conversation
    assert train[0].messages[0].content.startswith("<image>\n") and train[0].num_placeholders == 1
    assert train[0].images == [str(out / "images" / "train" / "0.png")]
    records = json.loads((out / "train.json").read_text())
    answer_types = dict(zip([m.content for m in train[0].messages[1::2]], records[0]["answer_types"]))
    assert answer_types == {"circle": "open", "yes": "yes/no", "no": "yes/no"}
    test_questions = [json.loads(line) for line in (out / "test_questions.jsonl").read_text().splitlines()]
    assert test_questions[1] == {
        "id": "test-0-1",
        "image": "images/test/0.png",
        "question": "is there a circle?",
        "answer": "yes",
        "type": "yes/no",
    }
    answers = json.loads((out / "answers.json").read_text())
    assert answers["answers"] == ["circle", "red", "yes", "no"] and answers["yes_no"] == ["yes", "no"]
    assert check_file(out / "train.json").problems == [] and check_file(out / "test.json").problems == []
    split = convert_easy_vqa(tmp_path / "split", data_dir=fake_easy_vqa, max_turns=2)
    assert split["train"]["conversations"] == 3


@pytest.mark.slow
def test_the_real_easy_vqa_package(tmp_path):
    pytest.importorskip("easy_vqa", reason="easy-vqa is an optional extra: pip install -e '.[data]'")
    counts = convert_easy_vqa(tmp_path)
    assert counts["answers"] == 13
    assert counts["train"] == {"images": 4000, "questions": 38575, "yes_no_questions": 28407, "conversations": 4000}
    assert counts["test"] == {"images": 1000, "questions": 9673, "yes_no_questions": 7136, "conversations": 1000}
    report = check_file(tmp_path / "test.json")
    assert report.problems == [] and report.assistant_turns == 9673


def test_align_set_has_every_colour_question_half_the_shapes_and_as_many_yes_no(tmp_path):
    from wings.data.easy_vqa import _conversation, write_align_set

    records = [
        _conversation(
            "a",
            "images/train/0.png",
            [
                ("what color is the shape?", "red"),
                ("is it blue?", "no"),
                ("what is the red shape?", "circle"),
                ("is it red?", "yes"),
            ],
        ),
        _conversation("b", "images/train/1.png", [("what shape is in the image?", "triangle")]),
        _conversation(
            "c",
            "images/train/2.png",
            [
                ("what is the color of the shape?", "teal"),
                ("what shape is this?", "triangle"),
                ("is there a square?", "no"),
                ("does the image contain a circle?", "no"),
            ],
        ),
    ]
    (tmp_path / "train.json").write_text(json.dumps(records))
    assert write_align_set(tmp_path, seed=0) == {"colour": 2, "shape": 1, "yes/no": 3}
    align = read_conversations(tmp_path / "align.json")
    assert all(len(c.messages) == 2 and c.messages[0].content.startswith("<image>\n") for c in align)
    answers = sorted(c.messages[1].content for c in align)
    assert answers.count("yes") + answers.count("no") == 3 and {"red", "teal"} <= set(answers)
    assert len({"circle", "triangle"} & set(answers)) == 1  # half of the three shape questions, rounded down
    first = (tmp_path / "align.json").read_text()
    write_align_set(tmp_path, seed=0)  # a fixed seed gives the same file
    assert (tmp_path / "align.json").read_text() == first
