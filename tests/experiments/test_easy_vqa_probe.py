"""The yes/no probe: per layer, a linear read-out of the right answer beside the prior and the model's own answer."""

from __future__ import annotations

import pytest

from experiments.easy_vqa_probe import main, question_prior, yes_no_questions
from experiments.easy_vqa_stage1 import main as train_stage
from tests.fixtures.easy_vqa import fake_easy_vqa, tiny_stage_arguments
from wings.data.easy_vqa import convert_easy_vqa


@pytest.fixture(scope="module")
def easy_vqa(tmp_path_factory):
    data = tmp_path_factory.mktemp("easy-vqa")
    convert_easy_vqa(data, fake_easy_vqa(tmp_path_factory.mktemp("raw")), max_turns=1)
    return data


def test_questions_and_prior_read_both_splits(easy_vqa):
    train = yes_no_questions(easy_vqa, "train", 100)
    assert len(train) == 6 and {q["answer"] for q in train} == {"yes", "no"}
    assert all("<image>" not in q["question"] for q in train)
    assert len(yes_no_questions(easy_vqa, "test", 2)) == 2
    assert question_prior(easy_vqa) == {"is there a circle?": "yes"}  # 3 yes, 3 no: the first counted wins a tie


def test_probe_scores_every_layer(tmp_path, easy_vqa, tiny_llm_dir):
    out = tmp_path / "stage1"
    train_stage(tiny_stage_arguments(easy_vqa, out, tiny_llm_dir))
    result = main(["--model", str(out / "model"), "--data", str(easy_vqa), "--train-questions", "6"])
    layers = result["probe_by_layer"]
    assert len(layers) >= 2 and all(0 <= value <= 100 for value in layers)  # embeddings, then every layer
    assert result["test_questions"] == 3 and result["train_questions"] == 6
    assert 0 <= result["model_answer"] <= 100 and result["best_probe"] == max(layers)


def test_probe_can_read_the_images_colour_instead_of_the_answer(tmp_path, easy_vqa, tiny_llm_dir):
    out = tmp_path / "stage1"
    train_stage(tiny_stage_arguments(easy_vqa, out, tiny_llm_dir))
    result = main(["--model", str(out / "model"), "--data", str(easy_vqa), "--target", "colour"])
    assert result["target"] == "colour" and result["model_answer"] is None
    assert result["test_questions"] == 3 and len(result["probe_by_layer"]) >= 2
    # the prior of a colour is its most frequent class: the miniature's 6 training images have 3 colours, 2 each
    assert result["question_prior"] == pytest.approx(100 / 3, abs=0.1)


def test_a_folder_without_a_model_is_refused(tmp_path, easy_vqa, capsys):
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path), "--data", str(easy_vqa)])
    assert "holds no model (config.json)" in capsys.readouterr().err
