"""The yes/no bound: Bayes' answer from the question text and an image comparison right p of the time."""

from __future__ import annotations

import pytest

from experiments.easy_vqa_yes_no_bound import bound_table, expected_accuracy, main
from tests.fixtures.easy_vqa import fake_easy_vqa
from wings.data.easy_vqa import convert_easy_vqa
from wings.evaluation.runner import SEED
from wings.evaluation.vqa import (
    answer_prior,
    easy_vqa_sample,
    easy_vqa_train_answers,
    load_easy_vqa,
    prior_accuracy,
    question_prior,
)


def test_expected_accuracy_follows_bayes_rule():
    # a text answered "yes" 1 time in 8: a blind answer says "no"
    assert expected_accuracy(1 / 8, "no", 0.5) == 1 and expected_accuracy(1 / 8, "yes", 0.5) == 0
    # a signal right 80% of the time cannot overturn odds of 7 to 1 (80 / 20 = 4): still "no" whatever it says
    assert expected_accuracy(1 / 8, "yes", 0.8) == 0
    # right 90% of the time (odds 9 > 7), it decides: the answer is right when the signal is
    assert expected_accuracy(1 / 8, "yes", 0.9) == pytest.approx(0.9)
    assert expected_accuracy(1 / 8, "no", 0.9) == pytest.approx(0.9)
    assert expected_accuracy(0.3, "yes", 1.0) == 1 and expected_accuracy(0.3, "no", 1.0) == 1


def test_a_blind_signal_scores_the_question_prior_and_a_perfect_one_everything(tmp_path, capsys):
    data = tmp_path / "easy-vqa"
    convert_easy_vqa(data, fake_easy_vqa(tmp_path / "raw"), max_turns=1)
    table = main(["--data", str(data), "--limit", "9", "--open-accuracy", "0.5"])
    rows = {row["signal"]: row for row in table["rows"]}
    questions = easy_vqa_sample(load_easy_vqa(data), 9, SEED)
    train = easy_vqa_train_answers(data)
    blind = prior_accuracy(questions, answer_prior(train), question_prior(train))
    assert rows[0.5]["yes_no"] == pytest.approx(100 * blind["acc_yes_no"])  # the evaluation's own question prior
    assert rows[1.0]["yes_no"] == 100
    yes_no, open_count = table["yes_no_questions"], table["open_questions"]
    assert rows[1.0]["overall"] == pytest.approx(100 * (yes_no + 0.5 * open_count) / (yes_no + open_count))
    assert "| 100% | 100.0 |" in capsys.readouterr().out
    assert bound_table(data, 9, 1.0)["rows"][-1]["overall"] == 100


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--open-accuracy", "1.5"], "--open-accuracy is a fraction between 0 and 1"),
        (["--limit", "0"], "--limit is a number of test questions of at least 1"),
    ],
)
def test_bad_arguments_are_named(tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path), *arguments])
    assert message in capsys.readouterr().err


def test_a_folder_without_the_data_names_the_command_that_writes_it(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path / "missing")])
    error = capsys.readouterr().err
    assert "no test_questions.jsonl" in error and "wings data easy-vqa" in error
