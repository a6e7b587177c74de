"""Visual tasks: VQA loaders (easy-vqa folder, generic JSONL, MMBench TSV), normalisation, the scorers on a
tiny WINGS model, the answer prior, and `wings eval` with `vqa:` and `iit:` tasks."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_cli_and_report import run_eval

from tests.fixtures.models import tiny_checkpoint
from wings.evaluation import vqa
from wings.evaluation.tasks import get_task


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def tiny_wings(tmp_path_factory):
    """A random tiny WINGS model with non-zero learners and its ChatML processor, saved in one folder."""
    from wings import WingsForConditionalGeneration
    from wings.model.processing_wings import WingsProcessor

    folder = tiny_checkpoint(tmp_path_factory.mktemp("wings-ckpt"))
    return WingsForConditionalGeneration.from_pretrained(folder).eval(), WingsProcessor.from_pretrained(folder), folder


@pytest.fixture
def easy_folder(tmp_path) -> Path:
    """A few records in the layout `wings data easy-vqa` writes (test questions, train conversations, images)."""
    (tmp_path / "images" / "test").mkdir(parents=True)
    for image_id, color in ((0, (255, 0, 0)), (1, (0, 0, 255))):
        (tmp_path / "images" / "test" / f"{image_id}.png").write_bytes(png(color))
    write_jsonl(
        tmp_path / "test_questions.jsonl",
        [
            {
                "id": "test-0-0",
                "image": "images/test/0.png",
                "question": "What color is the shape?",
                "answer": "red",
                "type": "open",
            },
            {
                "id": "test-0-1",
                "image": "images/test/0.png",
                "question": "Is there a circle?",
                "answer": "yes",
                "type": "yes/no",
            },
            {
                "id": "test-1-0",
                "image": "images/test/1.png",
                "question": "What shape is this?",
                "answer": "circle",
                "type": "open",
            },
            {
                "id": "test-1-1",
                "image": "images/test/1.png",
                "question": "Is the shape red?",
                "answer": "no",
                "type": "yes/no",
            },
        ],
    )
    train = [
        {
            "id": "train-0-0",
            "image": "images/train/0.png",
            "answer_types": ["open", "yes/no", "open", "yes/no", "yes/no"],
            "conversations": [
                {"from": "human", "value": "<image>\nq"},
                {"from": "gpt", "value": "circle"},
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "no"},
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "circle"},
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "no"},
                {"from": "human", "value": "q"},
                {"from": "gpt", "value": "yes"},
            ],
        }
    ]
    (tmp_path / "train.json").write_text(json.dumps(train))
    return tmp_path


@pytest.fixture
def vqa_file(tmp_path) -> Path:
    (tmp_path / "red.png").write_bytes(png((255, 0, 0)))
    (tmp_path / "green.png").write_bytes(png((0, 255, 0)))
    return write_jsonl(
        tmp_path / "vqa.jsonl",
        [
            {"id": "a", "image": "red.png", "question": "What color?", "answer": "red"},
            {
                "id": "b",
                "image": "green.png",
                "question": "How many shapes?",
                "answer": ["two", "2"],
                "category": "count",
            },
            {
                "id": "c",
                "image": "green.png",
                "question": "Which color?",
                "choices": ["red", "green", "blue"],
                "answer": "B",
            },
        ],
    )


def mmbench_tsv(path: Path, rows: list[dict]) -> Path:
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    lines = ["\t".join(header)] + ["\t".join(str(row.get(key, "")) for key in header) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def mmbench_file(tmp_path) -> Path:
    image = base64.b64encode(png((0, 0, 255))).decode()
    return mmbench_tsv(
        tmp_path / "mmbench.tsv",
        [
            {
                "index": 7,
                "question": "What color?",
                "hint": "A picture.",
                "A": "red",
                "B": "blue",
                "C": "green",
                "D": "",
                "answer": "B",
                "category": "color",
                "image": image,
            },
            {
                "index": 8,
                "question": "Is it dark?",
                "hint": "nan",
                "A": "yes",
                "B": "no",
                "answer": "A",
                "category": "attribute",
                "image": image,
            },
        ],
    )


# ------------------------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize(
    "text, normal",
    [
        ("The Circle.", "circle"),
        ("  RED ", "red"),
        ("Two", "2"),
        ("a triangle!", "triangle"),
        ("isn't", "isnt"),
        ("yes\nbecause it is", "yes"),
        ("", ""),
        ("blue-green", "blue green"),
    ],
)
def test_normalize_answer(text, normal):
    assert vqa.normalize_answer(text) == normal


def test_exact_match_accepts_any_listed_answer():
    assert vqa.exact_match("Two.", ["2"]) and vqa.exact_match("two", ["three", "2"])
    assert not vqa.exact_match("circles", ["circle"])


# ------------------------------------------------------------------------------------------- loaders
def test_easy_vqa_folder_loads_with_types_and_images(easy_folder):
    questions = vqa.load_easy_vqa(easy_folder)
    assert [q.kind for q in questions] == ["open", "yes/no", "open", "yes/no"]
    assert questions[0].answers == ("red",) and Path(questions[0].image) == easy_folder / "images/test/0.png"
    assert get_task(f"easyvqa:{easy_folder}").text_only is False
    assert len(get_task("easy_vqa").load(easy_folder, "test")) == 4  # the registered name reads --data-dir


def test_generic_jsonl_open_and_multiple_choice(vqa_file):
    a, b, c = vqa.load_vqa_jsonl(vqa_file)
    assert a.answers == ("red",) and not a.choices
    assert b.answers == ("two", "2") and b.group == "count"
    assert c.choices == ("red", "green", "blue") and c.gold == 1 and c.answers == ("green",)


def test_mmbench_tsv_decodes_images_and_drops_empty_options(mmbench_file):
    first, second = vqa.load_mmbench_tsv(mmbench_file)
    assert first.choices == ("red", "blue", "green") and first.gold == 1 and first.group == "color"
    assert first.hint == "A picture." and second.hint is None
    assert Image.open(io.BytesIO(first.image)).size == (12, 10)
    text = vqa.question_text(first, "letter")
    assert text.splitlines() == ["A picture.", "What color?", "A. red", "B. blue", "C. green", vqa.LETTER_INSTRUCTION]


def test_errors_name_the_file_the_record_and_the_field(tmp_path, vqa_file):
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        get_task(f"vqa:{tmp_path / 'missing.jsonl'}")
    with pytest.raises(FileNotFoundError, match="no test_questions.jsonl in .*wings data easy-vqa"):
        get_task(f"easyvqa:{tmp_path / 'nowhere'}")
    bad = write_jsonl(
        tmp_path / "bad.jsonl",
        [{"image": "red.png", "question": "q", "answer": "x"}, {"image": "red.png", "question": "q"}],
    )
    with pytest.raises(ValueError, match=r"bad.jsonl record 2: missing field 'answer'"):
        vqa.load_vqa_jsonl(bad)
    write_jsonl(bad, [{"image": "nope.png", "question": "q", "answer": "x"}])
    with pytest.raises(FileNotFoundError, match=r"bad.jsonl record 1: image .*nope.png does not exist"):
        vqa.load_vqa_jsonl(bad)
    write_jsonl(bad, [{"image": "red.png", "question": "q", "choices": ["x", "y"], "answer": "E"}])
    with pytest.raises(ValueError, match=r"bad.jsonl record 1: field 'answer' 'E' is out of range"):
        vqa.load_vqa_jsonl(bad)
    tsv = mmbench_tsv(
        tmp_path / "bad.tsv",
        [
            {"question": "q", "A": "x", "B": "y", "answer": "C", "image": "aGk="},
            {"question": "q", "A": "x", "B": "y", "answer": "A", "image": "%%%"},
        ],
    )
    with pytest.raises(ValueError, match=r"bad.tsv line 2: field 'answer' 'C' is not one of the options"):
        vqa.load_mmbench_tsv(tsv)
    mmbench_tsv(tsv, [{"question": "q", "A": "x", "B": "y", "answer": "A", "image": "%%%"}])
    with pytest.raises(ValueError, match=r"bad.tsv line 2: field 'image' is not valid base64"):
        vqa.load_mmbench_tsv(tsv)


# ------------------------------------------------------------------------------------------- answer prior
def test_answer_prior_on_a_hand_made_set(easy_folder):
    prior = vqa.answer_prior(vqa.easy_vqa_train_answers(easy_folder))
    assert prior == {"open": "circle", "yes/no": "no"}
    scores = vqa.prior_accuracy(vqa.load_easy_vqa(easy_folder), prior)
    # "circle" is right for 1 of 2 open questions, "no" for 1 of 2 yes/no questions.
    assert (scores["acc"], scores["acc_yes_no"], scores["acc_open"]) == (0.5, 0.5, 0.5)


def test_question_prior_answers_each_question_as_it_was_most_often_answered_in_training(easy_folder):
    train = [
        ("open", "<image>\nWhat color is the shape?", "red"),
        ("open", "what color is  the shape?", "red"),
        ("open", "What color is the shape?", "blue"),
        ("yes/no", "Is the shape red?", "no"),
        ("yes/no", "Is there a circle?", "no"),
        ("yes/no", "Is there a circle?", "yes"),
        ("yes/no", "Is there a circle?", "yes"),
        ("open", "What shape?", "square"),
    ]
    by_question = vqa.question_prior(train)
    assert by_question["what color is the shape?"] == "red"  # placeholder, case and spacing ignored
    assert by_question["is there a circle?"] == "yes"
    by_type = vqa.answer_prior(train)
    assert by_type == {"open": "red", "yes/no": "no"}  # a tie: the first seen
    scores = vqa.prior_accuracy(vqa.load_easy_vqa(easy_folder), by_type, by_question)
    # red (right), yes (right), "What shape is this?" unseen: the type's "red" (wrong), no (right)
    assert (scores["acc"], scores["acc_yes_no"], scores["acc_open"]) == (0.75, 1.0, 0.5)


# ------------------------------------------------------------------------------------------- scorers
def test_open_answers_batched_equal_unbatched(tiny_wings, easy_folder):
    model, processor, _ = tiny_wings
    questions = vqa.load_easy_vqa(easy_folder)
    batched = vqa.generate_answers(model, processor, questions, batch_size=4, max_new_tokens=4)
    single = vqa.generate_answers(model, processor, questions, batch_size=1, max_new_tokens=4)
    assert batched == single


def test_multiple_choice_batched_equal_unbatched(tiny_wings, vqa_file, mmbench_file):
    model, processor, _ = tiny_wings
    questions = [q for q in vqa.load_vqa_jsonl(vqa_file) if q.choices] + vqa.load_mmbench_tsv(mmbench_file)
    for mode in ("likelihood", "letter"):
        batched = vqa.choice_loglikelihoods(model, processor, questions, mode, batch_size=8)
        single = vqa.choice_loglikelihoods(model, processor, questions, mode, batch_size=1)
        assert [len(s) for s in batched] == [len(q.choices) for q in questions]
        assert torch.allclose(torch.tensor(sum(batched, [])), torch.tensor(sum(single, [])), atol=1e-4)


def test_images_change_the_scores_and_text_only_is_marked(tiny_wings, vqa_file):
    model, processor, _ = tiny_wings
    questions = [q for q in vqa.load_vqa_jsonl(vqa_file) if q.choices]
    seen = vqa.choice_loglikelihoods(model, processor, questions)
    blind = vqa.choice_loglikelihoods(model, processor.tokenizer, questions)  # a tokenizer: the question alone
    assert seen != blind
    assert vqa.evaluate_vqa(model, processor, questions)["images_seen"] is True
    assert vqa.evaluate_vqa(model, processor.tokenizer, questions)["images_seen"] is False


def test_a_model_that_answers_right_scores_one(tiny_wings, easy_folder, monkeypatch):
    model, processor, _ = tiny_wings
    questions = vqa.load_easy_vqa(easy_folder)
    replies = {q.question: f"The {q.answers[0].upper()}." for q in questions}  # normalisation makes these exact

    def generate(input_ids, max_new_tokens, **kwargs):
        rows = []
        for ids in input_ids:
            prompt = processor.decode(ids)
            reply = next(r for question, r in replies.items() if question in prompt)
            rows.append(ids.tolist() + processor.tokenizer.encode(reply, add_special_tokens=False))
        width = max(map(len, rows))
        return torch.tensor([row + [processor.pad_token_id] * (width - len(row)) for row in rows])

    monkeypatch.setattr(model, "generate", generate)
    scores = vqa.evaluate_vqa(model, processor, questions, batch_size=3)
    assert (scores["acc"], scores["acc_yes_no"], scores["acc_open"]) == (1.0, 1.0, 1.0)


# ------------------------------------------------------------------------------------------- the CLI
def iit_file(tmp_path: Path, image: Path) -> Path:
    def turn(modality, prompt, answer, with_image=False):
        return {
            "modality": modality,
            "source": "s",
            "source_id": prompt,
            "prompt": f"Question: {prompt}\nAnswer:",
            "choices": ["red", "blue"],
            "answer": answer,
            "image": str(image) if with_image else None,
        }

    dialogues = [
        {"id": "1", "config": "T", "turns": [turn("T", "Sky?", 1)]},
        {"id": "2", "config": "T,V", "turns": [turn("T", "Sky?", 1), turn("V", "Color?", 0, True)]},
        {"id": "3", "config": "V", "turns": [turn("V", "Color?", 0, True)]},
        {"id": "4", "config": "V", "turns": [turn("V", "Shade?", 1, True)]},
    ]
    return write_jsonl(tmp_path / "iit.jsonl", dialogues)


def test_cli_writes_vqa_easy_vqa_and_iit_results(tiny_wings, vqa_file, easy_folder, mmbench_file, tmp_path):
    _, _, folder = tiny_wings
    iit = iit_file(tmp_path, vqa_file.parent / "red.png")
    out = tmp_path / "out"
    tasks = f"vqa:{vqa_file},easyvqa:{easy_folder},mmbench:{mmbench_file},iit:{iit}"
    assert (
        run_eval(
            [
                "--model",
                str(folder),
                "--tasks",
                tasks,
                "--vqa-max-new-tokens",
                "3",
                "--vqa-prompt-suffix",
                "Answer with one word.",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    scores = results["models"][str(folder)]
    assert set(scores[f"iit:{iit}"]["configs"]) == {"T", "T,V", "V"}
    assert scores[f"iit:{iit}"]["configs"]["V"]["num_samples"] == 2 and scores[f"iit:{iit}"]["images_seen"] is True
    assert scores[f"vqa:{vqa_file}"]["num_samples"] == 3 and scores[f"vqa:{vqa_file}"]["images_seen"] is True
    assert set(scores[f"mmbench:{mmbench_file}"]["categories"]) == {"color", "attribute"}
    easy = scores[f"easyvqa:{easy_folder}"]
    assert {"acc", "acc_yes_no", "acc_open"} <= set(easy) and easy["prior_acc"] == 0.5
    assert easy["question_prior_acc"] == 0.5  # the fixture's training questions are all "q": the type's answers
    assert results["tasks"][f"easyvqa:{easy_folder}"]["answer_prior"]["answers"] == {"open": "circle", "yes/no": "no"}
    assert all(info["text_only"] is False for info in results["tasks"].values())
    table = (out / "results.md").read_text()
    assert "acc[T,V]" in table and "acc[color]" in table and "acc_yes_no" in table and "answer-prior baseline" in table


def test_report_marks_a_blind_base_and_keeps_forgetting_text_only(tiny_wings, vqa_file, tmp_path):
    from wings.evaluation.report import forgetting, markdown_table
    from wings.evaluation.runner import EvalModel, EvalSettings, evaluate_models

    model, processor, _ = tiny_wings
    blind = EvalModel("blind-base", model, processor.tokenizer)  # no processor: the question text alone
    seeing = EvalModel("wings", model, processor.tokenizer, is_wings=True, processor=processor)
    settings = EvalSettings(tasks=[f"vqa:{vqa_file}"], progress=False, vqa_max_new_tokens=3)
    results = evaluate_models([seeing], blind, settings)
    assert results["models"]["blind-base"][f"vqa:{vqa_file}"]["images_seen"] is False
    assert results["models"]["wings"][f"vqa:{vqa_file}"]["images_seen"] is True
    table = markdown_table(results)
    assert "†" in table and "cannot see images" in table
    assert forgetting(results, "wings") is None  # visual tasks never enter the text-only average
