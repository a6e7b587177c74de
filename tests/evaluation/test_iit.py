"""The IIT builder: configurations, the same final questions where configurations end alike, determinism, no
repeated scored question; and IIT scoring, through the chat template where the tokenizer has one."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.fixtures.models import text_config
from tests.fixtures.tokenizers import build_tokenizer
from wings.cli import main
from wings.evaluation.iit import (
    CONFIGURATIONS,
    build_iit,
    evaluate_iit,
    load_sources,
    plain_dialogue_text,
    read_iit,
    render_dialogue,
    write_iit,
)

TOPICS = ["the sky", "a cat", "the sea", "a dog", "the sun", "a fox", "the moon", "a bird"]


@pytest.fixture
def sources(tmp_path):
    text_file, visual_file = tmp_path / "text.jsonl", tmp_path / "visual.jsonl"
    with open(text_file, "w") as handle:
        for index, topic in enumerate(TOPICS * 2):  # each question text twice under two ids: never paired with itself
            handle.write(
                json.dumps(
                    {
                        "id": f"t{index}",
                        "question": f"What colour is {topic}?",
                        "choices": ["blue", "red", "green"],
                        "answer": index % 3,
                    }
                )
                + "\n"
            )
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


def test_configurations_ending_alike_score_the_same_final_questions(sources):
    text, visual = sources
    dialogues = build_iit(text, visual, per_config=5, seed=3)  # 5 of 16 text and 5 of 8 visual questions
    for final in ("T", "V"):
        ending = [c for c in CONFIGURATIONS if c.endswith(final)]
        scored = {
            config: [(d["id"][-4:], d["turns"][-1]["source_id"]) for d in dialogues if d["config"] == config]
            for config in ending
        }
        assert len(ending) == 3 and len(scored[ending[0]]) == 5
        assert all(scored[config] == scored[ending[0]] for config in ending), scored  # same questions, same rows
    # Building fewer configurations changes none of them.
    alone = build_iit(text, visual, per_config=5, seed=3, configurations=["T,T,V"])
    assert alone == [d for d in dialogues if d["config"] == "T,T,V"]


def test_build_from_the_real_arc_files(tmp_path, capsys, shared_data):
    data = shared_data
    visual = tmp_path / "visual.jsonl"
    photo = data / "photos" / "000000039769.png"
    visual.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"cats{n}",
                    "image": str(photo),
                    "question": question,
                    "choices": ["one", "two", "three"],
                    "answer": "two",
                }
            )
            + "\n"
            for n, question in enumerate(["How many cats are there?", "How many remotes?"])
        )
    )
    out = tmp_path / "iit.jsonl"
    assert (
        main(
            [
                "iit",
                "build",
                "--text",
                "arc_easy",
                "arc_challenge",
                "--visual",
                str(visual),
                "--data-dir",
                str(data),
                "--split",
                "validation",
                "--out",
                str(out),
                "--per-config",
                "3",
            ]
        )
        == 0
    )
    assert "(T): 3, (T,T): 3, (T,T,T): 3, (T,T,V): 2, (T,V): 2, (V): 2" in capsys.readouterr().out
    dialogues = read_iit(out)
    final = {d["id"]: d["turns"][-1]["source_id"] for d in dialogues}
    assert [final[f"iit-{c}-0002"] for c in ("T", "TT", "TTT")] == [final["iit-T-0002"]] * 3
    assert {d["turns"][-1]["source"] for d in dialogues if d["config"] == "T"} <= {"arc_easy", "arc_challenge"}
    assert all(t["similarity"] > 0 for d in dialogues for t in d["turns"][:-1] if t["modality"] == "T")


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
    assert (
        main(
            [
                "iit",
                "build",
                "--text",
                f"mc:{text_file}",
                "--visual",
                str(tmp_path / "visual.jsonl"),
                "--out",
                str(out),
                "--per-config",
                "2",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    dialogues = read_iit(out)
    assert len(dialogues) == 12
    context, images = plain_dialogue_text(
        dialogues[2], with_images=False
    )  # (T,T): one answered turn, then the question
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
    assert result["chat_template"] is False  # the tiny tokenizer has none: plain text
    accuracies = [c["acc"] for c in result["configs"].values()]
    assert result["acc"] == pytest.approx(sum(accuracies) / 6)
    assert all(a in (0.0, 0.5, 1.0) for a in accuracies)


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat-template"])
def test_iit_scoring_shows_the_image_to_a_wings_model(tmp_path, tiny_tokenizer, chat):
    from PIL import Image
    from transformers import LlamaConfig

    from tests.fixtures.models import COMMON, vision_config
    from wings import WingsConfig, WingsForConditionalGeneration
    from wings.model.processing_wings import WingsProcessor

    torch.manual_seed(0)
    config = WingsConfig(text_config=LlamaConfig(**{**COMMON, "vocab_size": 512}), vision_config=vision_config())
    model = WingsForConditionalGeneration(config).eval()
    tokenizer = build_tokenizer("chatml") if chat else copy.deepcopy(tiny_tokenizer)
    processor = WingsProcessor.from_model_config(tokenizer, config)  # it adds <image>
    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "red.png")
    turns = [
        {
            "modality": "T",
            "prompt": "Question: what colour is the sky?\nAnswer:",
            "choices": ["blue", "red"],
            "answer": 0,
            "image": None,
        },
        {
            "modality": "V",
            "prompt": "Question: what colour is this?\nAnswer:",
            "choices": ["blue", "red"],
            "answer": 1,
            "image": str(tmp_path / "red.png"),
        },
    ]
    path = write_iit([{"id": "x", "config": "T,V", "turns": turns}], tmp_path / "iit.jsonl")
    rendered = render_dialogue(read_iit(path)[0], processor, with_images=True)
    assert rendered.images == [str(tmp_path / "red.png")] and rendered.chat_template == chat
    if chat:
        assert "<|im_start|>user\n<image>\nQuestion: what colour is this?<|im_end|>\n<|im_start|>assistant\n" in (
            rendered.context
        )
    else:
        assert rendered.context.endswith("blue\n\n<image>\nQuestion: what colour is this?\nAnswer:")
    seen: list[list[int]] = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"][0].tolist()), with_kwargs=True
    )
    result = evaluate_iit(model, processor, path)
    assert result["images_seen"] and result["configs"]["T,V"]["num_samples"] == 1 and result["chat_template"] == chat
    assert len(seen) == 2 and all(ids.count(config.image_token_id) == config.image_seq_length for ids in seen)


def two_turn_dialogue() -> dict:
    turns = [
        {
            "modality": "T",
            "prompt": "Question: What colour is the sky?\nAnswer:",
            "choices": ["red", "blue"],
            "answer": 1,
            "image": None,
        },
        {
            "modality": "T",
            "prompt": "Question: What colour is the sea?\nAnswer:",
            "choices": ["blue", "red"],
            "answer": 0,
            "image": None,
        },
    ]
    return {"id": "d", "config": "T,T", "turns": turns}


def test_a_dialogue_is_rendered_through_the_chat_template():
    tokenizer = build_tokenizer("chatml")
    rendered = render_dialogue(two_turn_dialogue(), tokenizer, with_images=False)
    assert rendered.chat_template and rendered.images == [] and rendered.target_delimiter == ""
    assert rendered.context == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nQuestion: What colour is the sky?<|im_end|>\n"
        "<|im_start|>assistant\nblue<|im_end|>\n"  # the earlier turn answered with its gold choice
        "<|im_start|>user\nQuestion: What colour is the sea?<|im_end|>\n"
        "<|im_start|>assistant\n"  # the scored choice follows as the assistant's answer
    )
    plain = render_dialogue(two_turn_dialogue(), _without_template(tokenizer), with_images=False)
    assert not plain.chat_template and plain.target_delimiter == " "
    assert plain.context == (
        "Question: What colour is the sky?\nAnswer: blue\n\nQuestion: What colour is the sea?\nAnswer:"
    )


def _without_template(tokenizer):
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = None
    return tokenizer


@pytest.mark.parametrize("style", ["chatml", "llama3"])
def test_scoring_reads_the_templated_dialogue_and_scores_each_choice_as_the_answer(style, tmp_path):
    tokenizer = build_tokenizer(style)
    path = write_iit([two_turn_dialogue()], tmp_path / "iit.jsonl")
    torch.manual_seed(0)
    config = text_config("llama")
    config.vocab_size = len(tokenizer)
    model = AutoModelForCausalLM.from_config(config).eval()
    seen: list[list[int]] = []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"][0].tolist()), with_kwargs=True
    )
    result = evaluate_iit(model, tokenizer, path)
    assert result["chat_template"] is True and result["num_samples"] == 1
    context = render_dialogue(two_turn_dialogue(), tokenizer, with_images=False).context
    for inputs, choice in zip(seen, ["blue", "red"]):  # one forward per choice: the context, then the choice
        expected = tokenizer.encode(context + choice, add_special_tokens=False)
        assert inputs == expected[:-1]  # the last token is only a target
        if style == "llama3":  # the template writes the BOS: exactly one
            assert inputs[0] == tokenizer.bos_token_id and inputs.count(tokenizer.bos_token_id) == 1
