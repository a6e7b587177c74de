"""Loaders read the real benchmark files with the right counts, and fail clearly on bad input."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from wings.evaluation.tasks import TASKS, expand_task_names, get_task, load_generic_jsonl, retention_file


def test_arc_real_files(shared_data):
    data = shared_data
    easy = TASKS["arc_easy"].load(data, "validation")
    assert len(easy) == 570
    assert len(TASKS["arc_easy"].load(data, "train")) == 2251
    assert len(TASKS["arc_challenge"].load(data, "validation")) == 299
    first = easy[0]  # MCAS_2000_4_6: "Which technology was developed most recently?", answer A
    assert first.question == "Question: Which technology was developed most recently?\nAnswer:"
    assert first.choices[first.gold] == "cellular telephone"
    assert all(0 <= doc.gold < len(doc.choices) for doc in easy)


def test_mmlu_real_files_per_subject_and_overall(shared_data):
    data = shared_data
    subjects = {
        "abstract_algebra": 11,
        "college_physics": 11,
        "elementary_mathematics": 41,
        "global_facts": 10,
        "high_school_geography": 22,
        "marketing": 25,
        "us_foreign_policy": 11,
    }
    total = 0
    for subject, count in subjects.items():
        docs = get_task(f"mmlu_{subject}").load(data, "val")
        assert len(docs) == count and {d.group for d in docs} == {subject}
        total += count
    dev = TASKS["mmlu"].load(data, "dev")
    assert len(dev) == 57 * 5
    doc = get_task("mmlu_abstract_algebra").load(data, "val")[0]
    assert doc.question.endswith("\nA. 4\nB. 8\nC. 12\nD. 6\nAnswer:") and doc.gold == 0
    assert total == 131 and len(TASKS["mmlu"].load(data, "val")) == 131


def test_piqa_real_files(shared_data):
    docs = TASKS["piqa"].load(shared_data, "validation")
    assert len(docs) == 1838
    assert Counter(d.gold for d in docs).keys() == {0, 1}
    assert docs[0].question.startswith("Question: How do I ready a guinea pig cage")


def test_hellaswag_openbookqa_winogrande_layouts(tmp_path):
    (tmp_path / "hellaswag").mkdir()
    (tmp_path / "hellaswag" / "hellaswag_val.jsonl").write_text(
        json.dumps(
            {
                "ind": 4,
                "activity_label": "Removing ice from car",
                "ctx_a": "Then, the man writes over the snow.",
                "ctx_b": "then",
                "endings": [", the man [title] adds wax.", ", the man leaves."],
                "label": 1,
            }
        )
        + "\n"
    )
    doc = TASKS["hellaswag"].load(tmp_path, "validation")[0]
    assert doc.question == "Removing ice from car: Then, the man writes over the snow. Then"
    assert doc.choices == [", the man. adds wax.", ", the man leaves."] and doc.gold == 1
    (tmp_path / "openbookqa").mkdir()
    (tmp_path / "openbookqa" / "test.jsonl").write_text(
        json.dumps(
            {
                "id": "7-980",
                "question_stem": "The sun is responsible for",
                "answerKey": "D",
                "choices": {"text": ["puppies", "rocks", "water", "plants sprouting"], "label": ["A", "B", "C", "D"]},
            }
        )
        + "\n"
    )
    doc = TASKS["openbookqa"].load(tmp_path, "test")[0]
    assert (doc.question, doc.gold) == ("The sun is responsible for", 3)
    (tmp_path / "winogrande").mkdir()
    (tmp_path / "winogrande" / "dev.jsonl").write_text(
        json.dumps(
            {
                "qID": "q1",
                "sentence": "Sarah was a better cook than Maria so _ made dinner.",
                "option1": "Sarah",
                "option2": "Maria",
                "answer": "1",
            }
        )
        + "\n"
    )
    doc = TASKS["winogrande"].load(tmp_path, "validation")[0]
    assert doc.choices == ["Sarah was a better cook than Maria so Sarah", "Sarah was a better cook than Maria so Maria"]
    assert doc.shared_continuation == "made dinner." and doc.gold == 0


def test_generic_jsonl_schema(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [
        {"question": "2+2?", "choices": ["3", "4"], "answer": 1},
        {"question": "Sky?", "choices": ["blue", "green"], "answer": "A"},
        {"question": "Cat?", "choices": ["meow", "woof"], "answer": "meow", "id": "c"},
    ]
    path.write_text("\n".join(map(json.dumps, rows)) + "\n")
    docs = get_task(f"mc:{path}").load(None, "file")
    assert [d.gold for d in docs] == [1, 0, 0] and docs[2].id == "c"
    assert docs[0].question == "Question: 2+2?\nAnswer:"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"question": "q", "choices": ["a", "b"]}, "missing field 'answer'"),
        ({"question": "q", "choices": ["a"], "answer": 0}, "at least two strings"),
        ({"question": "q", "choices": ["a", "b"], "answer": 5}, "out of range"),
        ({"question": "q", "choices": ["a", "b"], "answer": "maybe"}, "neither a letter"),
    ],
)
def test_malformed_records_name_file_and_record(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"question": "ok", "choices": ["a", "b"], "answer": 0}) + "\n" + json.dumps(record) + "\n"
    )
    with pytest.raises(ValueError, match=message) as error:
        load_generic_jsonl(path)
    assert f"{path} record 2" in str(error.value)


def test_broken_json_names_the_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": \n')
    with pytest.raises(ValueError, match=f"{path}:2: not valid JSON"):
        load_generic_jsonl(path)


def test_unknown_task_and_missing_files(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown task 'arc_medium'; known tasks: .*arc_easy"):
        get_task("arc_medium")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_task(f"mc:{tmp_path / 'nope.jsonl'}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="task arc_easy: split 'validation' is not under --data-dir"):
        TASKS["arc_easy"].load(tmp_path, "validation")
    with pytest.raises(
        FileNotFoundError,
        match="task piqa: no --data-dir given and the hub is not usable \\(HF_HUB_OFFLINE is set\\); pass --data-dir",
    ):
        TASKS["piqa"].load(None, "validation")
    assert expand_task_names(["arc_easy,retention", "arc_easy"]) == ["arc_easy", "retention_mc", "retention_lm"]


def test_easy_vqa_is_spelled_as_the_data_command_spells_it():
    assert expand_task_names(["easy-vqa,easy-vqa:data/easy-vqa"]) == ["easy_vqa", "easyvqa:data/easy-vqa"]


class NoHub:
    """A stand-in `datasets` module: any hub request fails the test."""

    @staticmethod
    def load_dataset(*args, **kwargs):
        raise AssertionError(f"the hub was asked for {args}")


@pytest.mark.parametrize("offline", ["0", "1"])
def test_a_split_missing_from_data_dir_is_one_line_naming_the_files_and_the_splits_there(
    tmp_path, monkeypatch, offline
):
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    monkeypatch.setitem(__import__("sys").modules, "datasets", NoHub)  # online too: --data-dir means local only
    (tmp_path / "arc").mkdir()
    for split in ("train", "validation"):
        (tmp_path / "arc" / f"ARC-Easy-{split}.jsonl").write_text("")
    (tmp_path / "mmlu" / "dev").mkdir(parents=True)
    (tmp_path / "mmlu" / "dev" / "anatomy_dev.csv").write_text("")
    with pytest.raises(FileNotFoundError) as error:
        TASKS["arc_easy"].load(tmp_path, "test")
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        f"task arc_easy: split 'test' is not under --data-dir {tmp_path} (looked for "
        "arc/ARC-Easy-test.jsonl, ARC-Easy-test.jsonl, ARC-Easy/test.jsonl); splits there: train, "
        "validation (pass --split validation)"
    )
    with pytest.raises(
        FileNotFoundError, match="task mmlu_anatomy: split 'test' .* splits there: dev \\(pass --split dev"
    ):
        TASKS["mmlu_anatomy"].load(tmp_path, "test")
    with pytest.raises(
        FileNotFoundError, match="task hellaswag: .*; no split of it is there; put a copy of Rowan/hellaswag"
    ):
        TASKS["hellaswag"].load(tmp_path, "validation")


def test_retention_questions_are_well_formed():
    docs = TASKS["retention_mc"].load(None, "test")
    assert len(docs) >= 250
    assert Counter(d.group for d in docs) == {"general_knowledge": 100, "arithmetic": 100, "language": 85}
    assert len({d.id for d in docs}) == len(docs)
    assert all(len(set(d.choices)) == len(d.choices) for d in docs)
    for doc in docs:  # arithmetic answers are checkable: recompute them
        if doc.group == "arithmetic":
            expression = doc.question.removeprefix("Question: What is ").removesuffix("?\nAnswer:")
            expression = expression.replace(" times ", "*").replace(" divided by ", "//").replace(" plus ", "+")
            assert str(eval(expression)) == doc.choices[doc.gold], doc.question  # noqa: S307 (our own file)
    prompts = [json.loads(line) for line in retention_file("prompts.jsonl").read_text().splitlines()]
    assert len(prompts) >= 30 and all(p["prompt"] for p in prompts)
