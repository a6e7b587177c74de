"""The easy-vqa stage experiment: it trains through the project's trainer and scores by question kind."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import pytest
import torch

from experiments import easy_vqa_scoring as scoring
from experiments import easy_vqa_stage1 as stage1
from experiments.easy_vqa_scoring import KINDS, LABELLED_YES_NO, KindScorer, image_labels, other_captions, question_kind
from experiments.easy_vqa_stage1 import earlier_align_shares, main, parse_arguments, write_balanced_align_set
from experiments.easy_vqa_yes_no_modes import COLOUR_QUESTION, SHAPE_QUESTION, last_word, names, rewrite_yes_no
from tests.fixtures.easy_vqa import fake_easy_vqa, tiny_stage_arguments
from wings.data.easy_vqa import convert_easy_vqa, write_align_set
from wings.model import wiring


@pytest.fixture(scope="module")
def easy_vqa(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("easy-vqa")
    convert_easy_vqa(data, fake_easy_vqa(tmp_path_factory.mktemp("raw")), max_turns=1)
    return data


def test_question_kinds():
    assert question_kind("is there a circle?", "yes") == "yes/no"
    assert question_kind("what color is the shape?", "red") == "colour"
    assert question_kind("what shape is in the image?", "circle") == "shape"


def test_balanced_align_set_answers_every_yes_no_question_text_yes_and_no_equally_often(tmp_path, easy_vqa):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.json").write_text((easy_vqa / "train.json").read_text())
    counts = write_balanced_align_set(data)
    records = json.loads((data / "align_balanced.json").read_text())
    # the miniature: 6 colour, 6 shape and 6 yes/no questions ("is there a circle?": 3 yes, 3 no)
    assert counts == {"colour": 6, "shape": 3, "yes/no": 6} and len(records) == 15
    answers = [r["conversations"][1]["value"] for r in records if r["conversations"][1]["value"] in ("yes", "no")]
    assert answers.count("yes") == answers.count("no") == 3


def test_describe_first_leads_yes_no_answers_with_what_the_image_shows(easy_vqa):
    records = json.loads((easy_vqa / "train.json").read_text())
    labels = image_labels(easy_vqa)
    rewritten = rewrite_yes_no(records, labels, "describe-first")
    assert len(rewritten) == len(records)  # every miniature image has a colour and a shape question
    answers = {
        r["image"]: r["conversations"][1]["value"] for r in rewritten if "circle?" in r["conversations"][0]["value"]
    }
    assert answers["images/train/0.png"] == "red circle. yes" and answers["images/train/1.png"] == "green triangle. no"
    opened = [r["conversations"][1]["value"] for r in rewritten if "color" in r["conversations"][0]["value"]]
    assert sorted(opened) == ["blue", "blue", "green", "green", "red", "red"]  # open answers untouched
    asked = [r["conversations"][1]["value"] for r in records if "circle?" in r["conversations"][0]["value"]]
    assert sorted(asked) == ["no"] * 3 + ["yes"] * 3  # the input is not changed in place
    unlabelled = rewrite_yes_no(records, {}, "describe-first")
    assert all(r["conversations"][1]["value"] not in ("yes", "no") for r in unlabelled)
    assert len(unlabelled) == len(records) - 6  # yes/no questions about an image of unknown colour are left out


def test_describe_first_answers_are_read_by_their_last_word_and_their_description():
    assert last_word("red circle. no") == "no" and last_word("Yes,") == "yes" and last_word("") == ""
    assert names(" Red circle. no", "red circle") and not names("blue circle. no", "red circle")


def test_caption_turn_puts_the_caption_before_each_yes_no_question(easy_vqa):
    records = json.loads((easy_vqa / "train.json").read_text())
    rewritten = rewrite_yes_no(records, image_labels(easy_vqa), "caption-turn")
    asked = [r for r in rewritten if len(r["conversations"]) == 4]
    assert len(asked) == 6 and len(rewritten) == len(records)
    first = next(r for r in asked if r["image"] == "images/train/1.png")["conversations"]
    assert [turn["value"] for turn in first] == [
        "<image>\nwhat is in the image?",
        "green triangle",
        "is there a circle?",
        "no",
    ]
    assert len(rewrite_yes_no(records, {}, "caption-turn")) == len(records) - 6
    assert rewrite_yes_no(records, {}, "plain") == records


def test_caption_text_writes_the_true_caption_before_each_yes_no_question_beside_the_image(easy_vqa):
    records = json.loads((easy_vqa / "train.json").read_text())
    rewritten = rewrite_yes_no(records, image_labels(easy_vqa), "caption-text")
    first = next(r for r in rewritten if r["image"] == "images/train/1.png" and r["conversations"][1]["value"] == "no")
    assert [turn["value"] for turn in first["conversations"]] == [
        "<image>\nThe image shows a green triangle.\nis there a circle?",
        "no",
    ]
    scorer = KindScorer(easy_vqa, 9, "caption-text")
    yes_no = next(q for q in scorer.questions if q["answer"] in ("yes", "no") and q["image"] in scorer.labels)
    prompt = scorer.prompt(yes_no, {})[0]["content"]
    labels = scorer.labels[yes_no["image"]]
    assert prompt.startswith(f"<image>\nThe image shows a {labels['colour']} {labels['shape']}.\n")


def test_own_caption_text_writes_the_caption_the_model_read_from_the_image(easy_vqa, monkeypatch):
    # The model reads the image through its answers to the colour and shape questions; the yes/no prompt then
    # carries that reading (a wrong one included), and "description" counts the readings that are right.
    scorer = KindScorer(easy_vqa, 9, "own-caption-text")
    yes_no = [q for q in scorer.questions if q["answer"] in ("yes", "no")]
    calls: list[list[str]] = []

    def ranked(model, processor, prompts, asked, chunk_size):
        calls.append([prompt[-1]["content"] for prompt in prompts])
        if len(calls) == 1:  # the readings: colour questions, then shape questions, image by image
            images = [image for image, _ in asked[: len(asked) // 2]]
            colours = ["purple" if image == yes_no[0]["image"] else scorer.labels[image]["colour"] for image in images]
            return colours + [scorer.labels[image]["shape"] for image in images]
        return [q["answer"] for q in scorer.questions]

    monkeypatch.setattr(scorer, "ranked", ranked)
    model = torch.nn.Linear(1, 1)
    scores = scorer.score(model, None)
    readings, scored = calls
    assert readings[0].endswith(COLOUR_QUESTION) and readings[-1].endswith(SHAPE_QUESTION)
    wrong = yes_no[0]["image"]
    for question, prompt in zip(scorer.questions, scored):
        if question["answer"] in ("yes", "no"):
            labels = scorer.labels[question["image"]]
            colour = "purple" if question["image"] == wrong else labels["colour"]
            assert prompt.startswith(f"<image>\nThe image shows a {colour} {labels['shape']}.\n")
        else:
            assert prompt == f"<image>\n{question['question']}"
    right = sum(q["image"] != wrong for q in yes_no)
    assert scores["description"] == round(100 * right / len(yes_no), 1) < 100
    assert scores["all"] == 100.0 and scores[LABELLED_YES_NO] == 100.0  # the true answers given back


def test_other_caption_text_writes_a_caption_wrong_on_both_colour_and_shape(easy_vqa):
    scorer = KindScorer(easy_vqa, 9, "other-caption-text")
    captions = other_captions(scorer.labels)
    assert set(captions) == set(scorer.labels)  # the miniature has images of other colour and shape for each
    for image, caption in captions.items():
        colour, shape = caption.split()
        assert colour != scorer.labels[image]["colour"] and shape != scorer.labels[image]["shape"]
    yes_no = next(q for q in scorer.questions if q["answer"] in ("yes", "no"))
    prompt = scorer.prompt(yes_no, captions)[0]["content"]
    assert prompt.startswith(f"<image>\nThe image shows a {captions[yes_no['image']]}.\n")


@pytest.mark.parametrize("mode, turns", [("describe-first", 2), ("caption-turn", 4)])
def test_yes_no_modes_train_on_rewritten_questions_and_score_descriptions(
    mode, turns, tmp_path, easy_vqa, tiny_llm_dir, monkeypatch
):
    # A model that writes exactly what was trained: the real scoring must then find every description and (when
    # they are read from the answer) every yes/no right; a random tiny model's generations would assert nothing.
    labels = image_labels(easy_vqa)
    answers = {
        (q["image"], q["question"]): q["answer"]
        for q in map(json.loads, (easy_vqa / "test_questions.jsonl").read_text().splitlines())
    }

    def trained_answers(model, processor, data, asked, batch_size):
        seen = [f"{labels[image]['colour']} {labels[image]['shape']}" for image, _ in asked]
        if mode == "caption-turn":
            return seen
        return [f"{text}. {answers[pair]}" for text, pair in zip(seen, asked)]

    monkeypatch.setattr(scoring, "greedy_answers", trained_answers)
    out = tmp_path / mode
    result = main(tiny_stage_arguments(easy_vqa, out, tiny_llm_dir, test_questions=9) + ["--yes-no-mode", mode])
    trained = json.loads((out / "train.json").read_text())
    yes_no = [r for r in trained if r["conversations"][-1]["value"].endswith(("yes", "no"))]
    assert len(yes_no) == 6 and all(len(r["conversations"]) == turns for r in yes_no)
    assert set(result["scores"]) == {*KINDS, "all", "description", LABELLED_YES_NO}
    assert result["scores"]["description"] == 100.0
    if mode == "describe-first":
        assert result["scores"]["yes/no"] == 100.0
    assert all(0 <= value <= 100 for value in result["scores"].values())


def test_the_earlier_stage_one_mix_is_every_colour_question_half_the_shapes_and_as_many_yes_no(tmp_path, easy_vqa):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.json").write_text((easy_vqa / "train.json").read_text())
    shares = earlier_align_shares(data)  # the miniature: 6 colour, 6 shape and 6 yes/no questions
    assert shares == pytest.approx({"colour": 6 / 15, "shape": 3 / 15, "yes/no": 6 / 15})
    assert write_align_set(data, name="align.json", shares=shares) == {"colour": 6, "shape": 3, "yes/no": 6}
    assert len(json.loads((data / "align.json").read_text())) == 15


def test_stage1_trains_through_the_trainer_and_scores_each_kind(tmp_path, easy_vqa, tiny_llm_dir):
    out = tmp_path / "stage1"
    extra = ["--eval-every", "1", "--train-file", "align.json", "--loraplus-ratio", "10"]
    result = main(tiny_stage_arguments(easy_vqa, out, tiny_llm_dir, steps=2, test_questions=9) + extra)
    assert set(result["scores"]) == {*KINDS, "all", LABELLED_YES_NO}
    assert all(0 <= value <= 100 for value in result["scores"].values())
    assert [entry["step"] for entry in result["history"]] == [1]  # every step before the last; the last is final
    provenance = json.loads((out / "model" / "provenance.json").read_text())  # written by wings.training.run
    assert provenance["status"] == "complete" and provenance["stage"] == "align"
    assert provenance["learning_rates"] == {"projector": 1e-3, "visual_learners": 1e-3}  # the demo's stage 1
    assert json.loads((out / "scores.json").read_text())["scores"] == result["scores"]
    assert json.loads((out / "model" / "processor_config.json").read_text())["system_prompt"] == ""  # the demo's


def test_stage2_from_an_earlier_stage_with_changed_rates(tmp_path, easy_vqa, tiny_llm_dir):
    first = tmp_path / "stage1"
    main(tiny_stage_arguments(easy_vqa, first, tiny_llm_dir))
    out = tmp_path / "stage2"
    result = main(
        [
            "--data",
            str(easy_vqa),
            "--out",
            str(out),
            "--init-from",
            str(first / "model"),
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--test-questions",
            "3",
            "--rates",
            '{"textual_learners": 0.001}',
        ]
    )
    provenance = json.loads((out / "model" / "provenance.json").read_text())
    assert provenance["stage"] == "instruct" and provenance["status"] == "complete"
    assert provenance["learning_rates"]["textual_learners"] == 1e-3  # changed; the others are the demo's
    assert provenance["learning_rates"]["llm"] == 2e-6
    assert set(result["scores"]) == {*KINDS, "all", LABELLED_YES_NO}


def test_score_only_scores_a_saved_model_as_its_run_did_with_the_same_learner_scope(tmp_path, easy_vqa, tiny_llm_dir):
    out, scope = tmp_path / "answer-turn", ["--visual-learner-at", "answer"]
    trained = main(tiny_stage_arguments(easy_vqa, out, tiny_llm_dir, steps=2, test_questions=9) + scope)
    flags = ["--data", str(easy_vqa), "--init-from", str(out / "model"), "--test-questions", "9", "--score-only"]
    assert main([*flags, *scope, "--out", str(tmp_path / "unused")])["scores"] == trained["scores"]
    assert not (tmp_path / "unused").exists()  # nothing trained, nothing written
    assert wiring.build_learner_inputs.__module__ == "wings.model.learner_inputs"  # the library's, after both runs


def test_the_answer_turn_scope_needs_a_chatml_turn_token(tmp_path):
    from tests.fixtures.tokenizers import build_tokenizer

    build_tokenizer("llama3").save_pretrained(tmp_path)
    args = argparse.Namespace(visual_learner_at="answer", init_from=tmp_path, llm=None)
    with pytest.raises(ValueError, match="finds the answer turn by <\\|im_start\\|>, which this LLM's tokenizer"):
        stage1.learner_scope(args)
    assert isinstance(stage1.learner_scope(argparse.Namespace(visual_learner_at="all")), contextlib.nullcontext)


def test_a_null_key_is_one_more_logit_of_zero_with_a_zero_value():
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(2, 3, 4, 8, generator=generator)  # (B, L, H, D)
    keys, values = torch.randn(2, 4, 5, 8, generator=generator), torch.randn(2, 4, 5, 8, generator=generator)
    allowed = torch.ones(2, 1, 3, 5, dtype=torch.bool)
    allowed[0, 0, 1, 2:] = False
    allowed[1, 0, 2, :] = False  # a query with no admissible key
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    scores = queries.transpose(1, 2) @ keys.transpose(-1, -2) / 8**0.5 + mask
    weights = torch.softmax(torch.cat([scores, torch.zeros(2, 4, 3, 1)], dim=-1), dim=-1)[..., :-1]
    expected = (weights @ values).transpose(1, 2).flatten(2)
    got = stage1.attend_with_null_key(queries, keys, values, mask)
    torch.testing.assert_close(got, expected)
    assert torch.equal(got[1, 2], torch.zeros(32))  # nothing admissible: all weight on the null key
    # None means plainly causal over the same tokens, as in the library's `attend`
    square = torch.randn(1, 4, 4, 8, generator=generator)  # (B, H, T = L, D)
    causal = torch.zeros(4, 4).masked_fill(~torch.ones(4, 4, dtype=torch.bool).tril(), float("-inf"))[None, None]
    torch.testing.assert_close(
        stage1.attend_with_null_key(square.transpose(1, 2), square, square, None),
        stage1.attend_with_null_key(square.transpose(1, 2), square, square, causal),
    )


def test_null_key_runs_patch_the_learners_for_the_run_only(tmp_path, easy_vqa, tiny_llm_dir, monkeypatch):
    calls, null_key = [], stage1.attend_with_null_key

    def counted(*args):
        calls.append(1)
        return null_key(*args)

    library_attend = stage1.fused.attend
    monkeypatch.setattr(stage1, "attend_with_null_key", counted)
    result = main(tiny_stage_arguments(easy_vqa, tmp_path / "null", tiny_llm_dir) + ["--null-key"])
    assert calls  # the learners attended through it, in training and scoring
    assert stage1.fused.attend is library_attend  # and the library's attention is back
    assert set(result["scores"]) == {*KINDS, "all", LABELLED_YES_NO}


def test_bf16_is_the_demos_stage1_precision(easy_vqa):
    args = parse_arguments(["--data", str(easy_vqa), "--bf16"])
    config = stage1.stage_config(args, easy_vqa / "train.json", easy_vqa)
    assert config["training"]["bf16"] is True and config["model"]["attn_implementation"] == "eager"
    plain = stage1.stage_config(parse_arguments(["--data", str(easy_vqa)]), easy_vqa / "train.json", easy_vqa)
    assert plain["training"]["bf16"] is False and "attn_implementation" not in plain["model"]


def test_a_stage_2_without_learners_and_batches_not_grouped_by_length(tmp_path, easy_vqa):
    (tmp_path / "config.json").write_text("{}")
    flags = ["--data", str(easy_vqa), "--init-from", str(tmp_path), "--stage", "llava-instruct"]
    config = stage1.stage_config(parse_arguments([*flags, "--no-group-by-length"]), easy_vqa / "train.json", easy_vqa)
    assert config["stage"] == "llava-instruct" and set(config["optim"]["learning_rates"]) == {"projector", "llm"}
    assert config["data"]["group_by_length"] is False
    visual = stage1.stage_config(parse_arguments([*flags[:-1], "instruct-visual"]), easy_vqa / "train.json", easy_vqa)
    assert set(visual["optim"]["learning_rates"]) == {"projector", "visual_learners", "llm"}
    assert visual["data"]["group_by_length"] is True  # the trainer's default
    low = stage1.stage_config(parse_arguments([*flags[:-2], "--router-init-visual-weight", "0.1"]), easy_vqa, easy_vqa)
    assert low["stage"] == "instruct" and low["model"]["router_init_visual_weight"] == 0.1
    assert "router_init_visual_weight" not in config["model"]  # not given: the model config's


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kinds", "colour,size"], "--kinds: unknown ['size']"),
        (["--rates", "{visual: 1}"], "--rates is not JSON"),
        (["--rates", '{"visual_learners": "fast"}'], "--rates must map group names to numbers"),
        (["--steps", "0"], "--steps and --batch-size must be at least 1"),
        (["--bf16", "--init-from", "."], "--bf16 is for a stage 1"),
        (["--stage", "llava-instruct"], "--stage llava-instruct is a stage 2: give the stage-1 model"),
        (["--router-init-visual-weight", "0.1"], "--router-init-visual-weight sets the routers a stage 2 creates"),
        (["--init-from", ".", "--router-init-visual-weight", "1"], "--router-init-visual-weight must be in (0, 1)"),
        (["--score-only"], "--score-only scores a trained model: give its folder with --init-from"),
    ],
)
def test_bad_flags_are_refused_with_the_fix(easy_vqa, capsys, flags, message):
    with pytest.raises(SystemExit):
        parse_arguments(["--data", str(easy_vqa), *flags])
    assert message in capsys.readouterr().err


def test_a_folder_without_the_data_names_the_command_that_writes_it(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_arguments(["--data", str(tmp_path)])
    assert "wings data easy-vqa --out" in capsys.readouterr().err


def test_init_from_must_hold_a_model(tmp_path, easy_vqa, capsys):
    with pytest.raises(SystemExit):
        parse_arguments(["--data", str(easy_vqa), "--init-from", str(tmp_path)])
    assert "holds no model (config.json)" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["describe-first", "caption-turn"])
def test_yes_no_modes_score_the_models_own_generations(mode, tmp_path, easy_vqa, tiny_llm_dir):
    """The unpatched path: the tiny model generates its descriptions / captions (greedy, with the KV cache)."""
    result = main(
        tiny_stage_arguments(easy_vqa, tmp_path / mode, tiny_llm_dir, test_questions=9) + ["--yes-no-mode", mode]
    )
    assert set(result["scores"]) == {*KINDS, "all", "description", LABELLED_YES_NO}
    assert all(0 <= value <= 100 for value in result["scores"].values())
