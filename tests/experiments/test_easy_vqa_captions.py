"""The caption experiment: the LLM fine-tuned on yes/no questions with the image's caption as text."""

from __future__ import annotations

from pathlib import Path

import pytest

from experiments.easy_vqa_captions import balanced_training_questions, captions, main
from tests.fixtures.easy_vqa import fake_easy_vqa
from wings.data.easy_vqa import convert_easy_vqa


@pytest.fixture(scope="module")
def easy_vqa(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("easy-vqa")
    convert_easy_vqa(data, fake_easy_vqa(tmp_path_factory.mktemp("raw")), max_turns=1)
    return data


def test_captions_and_balanced_questions(easy_vqa):
    seen = captions(easy_vqa)
    assert len(seen) == 9 and seen["images/train/0.png"] == "a red circle"  # 6 training and 3 test images
    questions = balanced_training_questions(easy_vqa, seen, seed=0)
    assert sorted(answer for _, _, answer in questions) == ["no"] * 3 + ["yes"] * 3


def test_fine_tunes_and_scores_every_eval_step(easy_vqa, tiny_llm_dir):
    result = main(["--data", str(easy_vqa), "--llm", str(tiny_llm_dir), "--steps", "2", "--eval-every", "1"])
    assert [entry["step"] for entry in result["history"]] == [0, 1, 2]
    assert result["question prior"] == 66.7  # "is there a circle?": prior "yes", right for 2 of the 3 test images
    assert result["questions"] == 3 and all(0 <= entry["yes/no"] <= 100 for entry in result["history"])


def test_bad_flags_are_refused(easy_vqa, capsys):
    with pytest.raises(SystemExit):
        main(["--data", str(easy_vqa), "--steps", "0"])
    assert "must be at least 1" in capsys.readouterr().err


def test_the_caption_turn_layout_puts_the_caption_in_an_assistant_turn_before_the_question(tiny_llm_dir):
    from experiments.easy_vqa_captions import prompt
    from wings.model.registry import load_llm

    _, tokenizer = load_llm(str(tiny_llm_dir))
    same = prompt(tokenizer, "a red circle", "is there a blue shape?")
    turn = prompt(tokenizer, "a red circle", "is there a blue shape?", "caption-turn")
    assert "The image shows a red circle.\nis there a blue shape?" in same
    caption_at, question_at = turn.index("red circle"), turn.index("is there a blue shape?")
    assert "what is in the image?" in turn[:caption_at] and "a red circle" not in turn  # as the stage-1 turn names it
    assert turn.count("assistant") == 2 and turn.rstrip().endswith("assistant")  # the caption's turn and the answer's
    assert caption_at < question_at
