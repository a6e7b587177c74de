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


def _align_records(colours: int, shapes: int, yes_no: int) -> list[dict]:
    """One conversation per image with its questions: `colours` colour, `shapes` shape, `yes_no` yes/no."""
    from wings.data.easy_vqa import _conversation

    colour_names = ["red", "teal", "blue", "gray"]
    turns = (
        [
            (("what color is the shape?", "what is the color of the shape?")[n % 2], colour_names[n % 4])
            for n in range(colours)
        ]
        + [("what shape is in the image?", ("circle", "triangle")[n % 2]) for n in range(shapes)]
        + [(f"is there a {colour_names[n % 4]} shape?", ("yes", "no")[n % 2]) for n in range(yes_no)]
    )
    return [_conversation(f"c{n}", f"images/train/{n}.png", [turn]) for n, turn in enumerate(turns)]


def test_align_set_has_every_colour_question_and_the_other_kinds_in_their_shares(tmp_path):
    from wings.data.easy_vqa import ALIGN_SHARES, align_file_name, write_align_set

    (tmp_path / "train.json").write_text(json.dumps(_align_records(colours=18, shapes=20, yes_no=30)))
    # every colour question is 45% of the set: 40 questions, 6 of them shape (15%) and 16 yes/no (40%)
    assert ALIGN_SHARES == {"colour": 0.45, "shape": 0.15, "yes/no": 0.40}
    assert align_file_name() == "align-45-15-40.json"
    assert write_align_set(tmp_path, seed=0) == {"colour": 18, "shape": 6, "yes/no": 16}
    align = read_conversations(tmp_path / "align-45-15-40.json")
    assert all(len(c.messages) == 2 and c.messages[0].content.startswith("<image>\n") for c in align)
    answers = [c.messages[1].content for c in align]
    assert answers.count("yes") + answers.count("no") == 16
    assert answers.count("circle") + answers.count("triangle") == 6
    assert sum(answers.count(colour) for colour in ("red", "teal", "blue", "gray")) == 18
    first = (tmp_path / "align-45-15-40.json").read_text()
    write_align_set(tmp_path, seed=0)  # a fixed seed gives the same file
    assert (tmp_path / "align-45-15-40.json").read_text() == first
    assert write_align_set(tmp_path, seed=1) == {"colour": 18, "shape": 6, "yes/no": 16}
    assert (tmp_path / "align-45-15-40.json").read_text() != first  # another seed draws other questions


def test_align_set_in_other_shares_and_when_a_kind_runs_short(tmp_path):
    from wings.data.easy_vqa import align_file_name, write_align_set

    (tmp_path / "train.json").write_text(json.dumps(_align_records(colours=10, shapes=20, yes_no=6)))
    shares = {"colour": 0.25, "shape": 0.25, "yes/no": 0.5}
    assert align_file_name(shares) == "align-25-25-50.json"
    # 10 colour questions are a quarter: 10 shape, and 20 yes/no wanted but only 6 exist
    assert write_align_set(tmp_path, shares=shares) == {"colour": 10, "shape": 10, "yes/no": 6}
    assert len(read_conversations(tmp_path / "align-25-25-50.json")) == 26
    assert write_align_set(tmp_path, name="align.json", shares=shares)["shape"] == 10
    assert (tmp_path / "align.json").is_file()


@pytest.mark.parametrize(
    "shares",
    [{"colour": 0.0, "shape": 0.5, "yes/no": 0.5}, {"colour": 0.5, "shape": -0.1, "yes/no": 0.6}, {"colour": 1.0}],
)
def test_align_set_refuses_shares_without_every_kind_or_with_no_colour(tmp_path, shares):
    from wings.data.easy_vqa import write_align_set

    (tmp_path / "train.json").write_text(json.dumps(_align_records(colours=2, shapes=2, yes_no=2)))
    with pytest.raises(ValueError, match="stage-1 shares must give colour"):
        write_align_set(tmp_path, shares=shares)
    assert not list(tmp_path.glob("align*.json"))


def test_align_set_refuses_shares_that_do_not_sum_to_one(tmp_path):
    from wings.data.easy_vqa import align_file_name, write_align_set

    (tmp_path / "train.json").write_text(json.dumps(_align_records(colours=2, shapes=2, yes_no=2)))
    shares = {"colour": 0.5, "shape": 0.5, "yes/no": 0.5}
    with pytest.raises(ValueError, match="stage-1 shares must sum to 1"):
        write_align_set(tmp_path, shares=shares)
    with pytest.raises(ValueError, match="stage-1 shares must sum to 1"):
        align_file_name(shares)
