"""The tower probe: per hidden state of the frozen tower, linear read-outs of the image's colour and shape."""

from __future__ import annotations

import pytest
import torch

from experiments.easy_vqa_stage1 import main as train_stage
from experiments.easy_vqa_tower_probe import as_grid, main, tower_features
from tests.fixtures.easy_vqa import fake_easy_vqa, tiny_stage_arguments
from wings.data.easy_vqa import convert_easy_vqa
from wings.model.modeling_wings import WingsForConditionalGeneration
from wings.model.processing_wings import WingsProcessor


@pytest.fixture(scope="module")
def easy_vqa(tmp_path_factory):
    data = tmp_path_factory.mktemp("easy-vqa")
    convert_easy_vqa(data, fake_easy_vqa(tmp_path_factory.mktemp("raw")), max_turns=1)
    return data


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, easy_vqa, tiny_llm_dir):
    out = tmp_path_factory.mktemp("stage1")
    train_stage(tiny_stage_arguments(easy_vqa, out, tiny_llm_dir))
    return out / "model"


def test_tokens_become_the_map_they_came_from():
    grid = torch.arange(2 * 3 * 16, dtype=torch.float32).view(2, 3, 4, 4)
    assert torch.equal(as_grid(grid.flatten(2).transpose(1, 2)), grid)
    with pytest.raises(ValueError, match="5 tokens are not a square map"):
        as_grid(torch.zeros(1, 5, 3))


def test_features_of_every_hidden_state_and_the_head_as_the_projector_reads_it(easy_vqa, model_dir):
    model = WingsForConditionalGeneration.from_pretrained(model_dir)
    processor = WingsProcessor.from_pretrained(model_dir)
    images = sorted((easy_vqa / "images" / "train").iterdir())[:3]
    features = tower_features(model, processor, images, chunk_size=2)  # two chunks
    with torch.no_grad():
        output = model.vision_tower(processor.preprocess_images([str(p) for p in images]), output_hidden_states=True)
    assert len(features) == len(output.hidden_states)
    head = output.last_hidden_state
    torch.testing.assert_close(torch.from_numpy(features[-1]["mean"]), head.mean(dim=1))
    torch.testing.assert_close(torch.from_numpy(features[-1]["grid"]), head.transpose(1, 2).flatten(1))
    assert all(f["grid"].shape[1] == f["mean"].shape[1] * head.shape[1] for f in features)  # pooled to the head's grid


def test_probe_scores_colour_and_shape_per_hidden_state(easy_vqa, model_dir):
    result = main(["--model", str(model_dir), "--data", str(easy_vqa)])
    assert result["train_images"] == 6 and result["test_images"] >= 1
    for label in ("colour", "shape"):
        rows = result[label]["by_state"]
        assert len(rows) >= 2 and all(0 <= row[p] <= 100 for row in rows for p in ("mean", "grid"))
    assert result["colour"]["by_state"][-1]["channels"] == 1280  # EfficientNet-Lite0's head


def test_bad_arguments_are_refused_with_the_fix(tmp_path, easy_vqa, model_dir, capsys):
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path), "--data", str(easy_vqa)])
    assert "holds no model (config.json)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(model_dir), "--data", str(tmp_path)])
    assert "wings data easy-vqa --out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", str(model_dir), "--data", str(easy_vqa), "--train-images", "1"])
    assert "--train-images must be at least 2" in capsys.readouterr().err
