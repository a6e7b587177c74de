"""The IIT builder: configurations, determinism, no repeated scored question; and IIT scoring."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from wings.evaluation.iit import (
    CONFIGURATIONS,
    build_iit,
    dialogue_context,
    evaluate_iit,
    load_sources,
    read_iit,
    write_iit,
)
from wings.cli import main
from tests.model.tiny import text_config

TOPICS = ["the sky", "a cat", "the sea", "a dog", "the sun", "a fox", "the moon", "a bird"]


@pytest.fixture
def sources(tmp_path):
    text_file, visual_file = tmp_path / "text.jsonl", tmp_path / "visual.jsonl"
    with open(text_file, "w") as handle:
        for index, topic in enumerate(TOPICS * 2):  # each question text twice under two ids: never paired with itself
            handle.write(json.dumps({"id": f"t{index}", "question": f"What colour is {topic}?",
                                     "choices": ["blue", "red", "green"], "answer": index % 3}) + "\n")  # fmt: skip
    with open(visual_file, "w") as handle:
        for index, topic in enumerate(TOPICS):
            record = {"id": f"v{index}", "image": f"img/{index}.png", "question": f"Is {topic} in the picture?"}
            handle.write(json.dumps({**record, "choices": ["yes", "no"], "answer": "no" if index % 2 else "A"}) + "\n")
    return load_sources([f"mc:{text_file}"], "T"), load_sources([str(visual_file)], "V")


def test_builder_makes_the_six_configurations(sources):
    text, visual = sources
    dialogues = build_iit(text, visual, per_config=5, seed=3)
    assert [d["config"] for d in dialogues] == [c for c in CONFIGURATIONS for _ in range(5)]
    for dialogue in dialogues:
        modalities = ",".join(turn["modality"] for turn in dialogue["turns"])
        assert modalities == dialogue["config"]
        assert all((turn["image"] is not None) == (turn["modality"] == "V") for turn in dialogue["turns"])
        assert dialogue["turns"][-1]["similarity"] is None
        assert all(turn["similarity"] is not None for turn in dialogue["turns"][:-1])
    assert visual[1].answer == 1 and visual[0].answer == 0 and visual[0].image.endswith("img/0.png")


def test_no_dialogue_repeats_its_scored_question_and_earlier_turns_are_similar(sources):
    text, visual = sources
    for dialogue in build_iit(text, visual, per_config=8, seed=0):
        prompts = [turn["prompt"] for turn in dialogue["turns"]]
        keys = [(turn["source"], turn["source_id"]) for turn in dialogue["turns"]]
        assert len(set(prompts)) == len(prompts) and len(set(keys)) == len(keys)
        similarities = [turn["similarity"] for turn in dialogue["turns"][:-1]]
        assert similarities == sorted(similarities)  # the most similar right before the scored turn
    # With a shared topic word available, the nearest text turn shares it.
    dialogue = next(d for d in build_iit(text, visual, per_config=8, seed=0) if d["config"] == "T,V")
    topic = next(t for t in TOPICS if t in dialogue["turns"][-1]["prompt"])
    assert topic in dialogue["turns"][0]["prompt"]


def test_builder_is_deterministic_with_a_seed(sources, tmp_path):
    text, visual = sources
    first = write_iit(build_iit(text, visual, per_config=4, seed=7), tmp_path / "a.jsonl").read_text()
    again = write_iit(build_iit(text, visual, per_config=4, seed=7), tmp_path / "b.jsonl").read_text()
    other = write_iit(build_iit(text, visual, per_config=4, seed=8), tmp_path / "c.jsonl").read_text()
    assert first == again and first != other


def test_embedding_model_replaces_tfidf(sources):
    text, visual = sources
    embed = lambda texts: torch.tensor([[len(t), 1.0] for t in texts]).numpy()  # noqa: E731
    dialogues = build_iit(text, visual, per_config=2, seed=0, embed=embed, configurations=["T,T"])
    assert len(dialogues) == 2 and dialogues[0]["turns"][0]["similarity"] == pytest.approx(1.0, abs=1e-3)


def test_missing_visual_source_is_a_clear_error(sources):
    with pytest.raises(ValueError, match="visual"):
        build_iit(sources[0], [], per_config=2)


def test_iit_cli_and_scoring(sources, tmp_path, tiny_tokenizer):
    text_file = tmp_path / "text.jsonl"
    out = tmp_path / "iit.jsonl"
    assert main(["iit", "build", "--text", f"mc:{text_file}", "--visual", str(tmp_path / "visual.jsonl"),
                 "--out", str(out), "--per-config", "2", "--seed", "1"]) == 0  # fmt: skip
    dialogues = read_iit(out)
    assert len(dialogues) == 12
    context, images = dialogue_context(dialogues[2], with_images=False)  # (T,T): one answered turn, then the question
    first, last = dialogues[2]["turns"]
    assert context == f"{first['prompt']} {first['choices'][first['answer']]}\n\n{last['prompt']}" and images == []

    torch.manual_seed(0)
    config = text_config("llama")
    config.vocab_size = len(tiny_tokenizer)
    model = AutoModelForCausalLM.from_config(config).eval()
    result = evaluate_iit(model, tiny_tokenizer, out)
    assert list(result["configs"]) == list(CONFIGURATIONS)
    assert all(c["num_samples"] == 2 for c in result["configs"].values())
    assert result["num_samples"] == 12 and not result["images_seen"]
    accuracies = [c["acc"] for c in result["configs"].values()]
    assert result["acc"] == pytest.approx(sum(accuracies) / 6)
    assert all(a in (0.0, 0.5, 1.0) for a in accuracies)


def test_iit_scoring_shows_the_image_to_a_wings_model(tmp_path, tiny_tokenizer):
    from PIL import Image
    from transformers import LlamaConfig

    from tests.model.tiny import COMMON, vision_config
    from wings import WingsConfig, WingsForConditionalGeneration
    from wings.model.processing_wings import WingsProcessor

    torch.manual_seed(0)
    config = WingsConfig(text_config=LlamaConfig(**{**COMMON, "vocab_size": 400}), vision_config=vision_config())
    model = WingsForConditionalGeneration(config).eval()
    processor = WingsProcessor.from_model_config(copy.deepcopy(tiny_tokenizer), config)  # it adds <image>
    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "red.png")
    turns = [{"modality": "T", "prompt": "Question: what colour is the sky?\nAnswer:", "choices": ["blue", "red"],
              "answer": 0, "image": None},
             {"modality": "V", "prompt": "Question: what colour is this?\nAnswer:", "choices": ["blue", "red"],
              "answer": 1, "image": str(tmp_path / "red.png")}]  # fmt: skip
    path = write_iit([{"id": "x", "config": "T,V", "turns": turns}], tmp_path / "iit.jsonl")
    context, images = dialogue_context(read_iit(path)[0], with_images=True)
    assert images == [str(tmp_path / "red.png")] and "<image>\nQuestion: what colour is this?" in context
    result = evaluate_iit(model, processor, path)
    assert result["images_seen"] and result["configs"]["T,V"]["num_samples"] == 1
