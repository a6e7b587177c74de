"""WingsProcessor: chat templates, labels, image tokens, truncation, pixels, save/load; WingsCollator's padding."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tests.fixtures.tokenizers import build_processor
from wings.data.formats import IGNORE_INDEX
from wings.data.validation import SampleDropped
from wings.model.processing_wings import WingsCollator, WingsProcessor

SEQ = 16  # visual tokens per image: (32 // 8) ** 2
END_OF_TURN = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}
CONVERSATION = [
    {"role": "user", "content": "<image>\nWhat is in the image?"},
    {"role": "assistant", "content": "A red circle."},
    {"role": "user", "content": "Who are they?"},
    {"role": "assistant", "content": "Demo response."},
]


@pytest.fixture(params=["chatml", "llama3"])
def style(request) -> str:
    return request.param


@pytest.fixture
def processor(style) -> WingsProcessor:
    return build_processor(style)


@pytest.fixture
def chatml_processor() -> WingsProcessor:
    return build_processor("chatml")


def red(width: int = 40, height: int = 20) -> Image.Image:
    return Image.new("RGB", (width, height), (255, 0, 0))


def supervised_text(processor: WingsProcessor, encoded: dict) -> str:
    labels = [label for label in encoded["labels"].tolist() if label != IGNORE_INDEX]
    return processor.tokenizer.decode(labels)


def test_labels_cover_exactly_the_assistant_turns_and_their_end_of_turn(processor, style):
    encoded = processor.encode_conversation(CONVERSATION, [red()])
    end = END_OF_TURN[style]
    assert supervised_text(processor, encoded) == f"A red circle.{end}Demo response.{end}"
    # supervised positions are contiguous runs, one per assistant turn
    supervised = (encoded["labels"] != IGNORE_INDEX).int().tolist()
    runs = sum(1 for i, flag in enumerate(supervised) if flag and (i == 0 or not supervised[i - 1]))
    assert runs == 2
    # labels are unshifted: equal to the input ids where supervised
    mask = encoded["labels"] != IGNORE_INDEX
    assert torch.equal(encoded["labels"][mask], encoded["input_ids"][mask])


def test_rendering_uses_the_tokenizers_own_chat_template(processor, style):
    encoded = processor.encode_conversation(CONVERSATION, [red()])
    text = processor.decode(encoded["input_ids"])
    if style == "chatml":
        assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\nWhat")
    else:
        assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n\nWhat is in")
    assert text == processor.render(CONVERSATION).replace("<image>", "")


def test_each_image_becomes_image_seq_length_consecutive_image_tokens(processor):
    conversation = [
        {"role": "user", "content": "compare<image>and<image>now"},  # placeholders glued to words: never merged
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "and this?<image>"},
        {"role": "assistant", "content": "ok"},
    ]
    encoded = processor.encode_conversation(conversation, [red(), red(10, 30), red(5, 5)])
    ids = encoded["input_ids"]
    positions = (ids == processor.image_token_id).nonzero().flatten().tolist()
    assert len(positions) == 3 * SEQ
    blocks = [positions[i : i + SEQ] for i in range(0, len(positions), SEQ)]
    assert all(block == list(range(block[0], block[0] + SEQ)) for block in blocks)
    assert torch.equal(encoded["image_token_mask"], ids == processor.image_token_id)
    assert processor.image_placeholder_id not in ids.tolist()
    assert (encoded["labels"][encoded["image_token_mask"]] == IGNORE_INDEX).all()
    assert encoded["pixel_values"].shape == (3, 3, 32, 32)
    assert encoded["attention_mask"].tolist() == [1] * len(ids)


def test_image_token_is_an_added_special_token_and_text_around_it_is_unchanged(processor):
    tokenizer = processor.tokenizer
    assert "<image>" in tokenizer.get_added_vocab()
    assert tokenizer("x<image>y", add_special_tokens=False)["input_ids"][1] == processor.image_placeholder_id
    assert processor.image_token_id != processor.image_placeholder_id  # the model's id, outside the vocabulary


def test_text_only_sample_has_no_image_tokens_and_an_empty_pixel_tensor(processor):
    encoded = processor.encode_conversation(
        [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi"}]
    )
    assert not encoded["image_token_mask"].any()
    assert encoded["pixel_values"].shape == (0, 3, 32, 32)


def test_placeholder_and_image_counts_must_match(processor):
    with pytest.raises(ValueError, match=r"^1 <image> placeholder\(s\) in the text but 2 image\(s\) given$"):
        processor.encode_conversation(CONVERSATION, [red(), red()])


def test_truncation_never_cuts_inside_an_image_and_drops_the_images_it_cuts_off(chatml_processor):
    processor = chatml_processor
    conversation = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there, how are you?"},
        {"role": "user", "content": "look <image> and <image>"},
        {"role": "assistant", "content": "yes"},
    ]
    images = [red(), red()]
    full = processor.encode_conversation(conversation, images)
    first_image = int(full["image_token_mask"].nonzero()[0])
    max_length = first_image + SEQ // 2  # the cut would fall in the middle of the first image
    encoded = processor.encode_conversation(conversation, images, max_length=max_length)
    assert len(encoded["input_ids"]) == first_image  # cut before the image, not inside it
    assert torch.equal(encoded["input_ids"], full["input_ids"][:first_image])
    assert encoded["pixel_values"].shape[0] == 0 and not encoded["image_token_mask"].any()
    # a cut after the first image keeps exactly that one image with all its tokens
    encoded = processor.encode_conversation(conversation, images, max_length=first_image + SEQ + 2)
    assert int(encoded["image_token_mask"].sum()) == SEQ and encoded["pixel_values"].shape[0] == 1


def test_images_alone_over_max_length_drop_the_sample(chatml_processor):
    conversation = [{"role": "user", "content": "<image><image>"}, {"role": "assistant", "content": "two"}]
    with pytest.raises(SampleDropped, match=r"^2 image\(s\) x 16 tokens = 32 tokens exceed max_length=20$"):
        chatml_processor.encode_conversation(conversation, [red(), red()], max_length=20)


def test_sample_with_no_answer_left_after_truncation_is_dropped(chatml_processor):
    with pytest.raises(SampleDropped, match=r"^no assistant token within max_length=25$"):
        chatml_processor.encode_conversation(CONVERSATION, [red()], max_length=25)


def test_pad_to_square_uses_the_mean_colour_and_resize_stretches(style):
    pad = build_processor(style, image_preprocess="pad").preprocess_images([red(64, 32)])
    resize = build_processor(style, image_preprocess="resize").preprocess_images([red(64, 32)])
    assert pad.shape == resize.shape == (1, 3, 32, 32)
    # SigLIP: mean = std = 0.5, so the mean-colour padding normalises to ~0 and red to (1, -1, -1)
    assert torch.allclose(pad[0, :, 0, 0], torch.zeros(3), atol=0.01)
    assert torch.allclose(pad[0, :, 16, 16], torch.tensor([1.0, -1.0, -1.0]), atol=0.01)
    assert torch.allclose(resize[0, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]), atol=0.01)


def test_clip_tower_gets_clip_statistics_and_no_crop(chatml_processor):
    from transformers import CLIPVisionConfig

    processor = WingsProcessor.from_vision_config(
        chatml_processor.tokenizer, CLIPVisionConfig(image_size=28, patch_size=14), image_token_id=999
    )
    assert processor.image_seq_length == 4
    assert processor.image_processor.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert processor.preprocess_images([red(90, 30)]).shape == (1, 3, 28, 28)


def test_save_and_load_round_trip(tmp_path, processor):
    processor.save_pretrained(tmp_path)
    loaded = WingsProcessor.from_pretrained(tmp_path)
    for name in ("image_token", "image_token_id", "image_seq_length", "image_preprocess", "max_pixels"):
        assert getattr(loaded, name) == getattr(processor, name)
    assert loaded.image_placeholder_id == processor.image_placeholder_id
    assert loaded.image_processor.size == processor.image_processor.size
    first, second = (
        processor.encode_conversation(CONVERSATION, [red()]),
        loaded.encode_conversation(CONVERSATION, [red()]),
    )
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_system_prompt_replaces_the_templates_default_and_travels_with_the_processor(tmp_path):
    default = build_processor("chatml")
    empty = build_processor("chatml", system_prompt="")
    prompt = [{"role": "user", "content": "<image>\nWhat is in the image?"}]
    assert empty.render(prompt).startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<image>")
    shorter = len(default.encode_conversation(CONVERSATION, [red()])["input_ids"]) - len(
        empty.encode_conversation(CONVERSATION, [red()])["input_ids"]
    )
    assert shorter == len(default.tokenizer("You are a helpful assistant.", add_special_tokens=False)["input_ids"])
    # a conversation's own system message wins; transformers' apply_chat_template renders as render does
    own = [{"role": "system", "content": "Be brief."}] + prompt
    assert empty.render(own) == default.render(own)
    assert empty.apply_chat_template(prompt, tokenize=False) == empty.render(prompt)
    assert empty.apply_chat_template([prompt, own], tokenize=False) == [empty.render(prompt), empty.render(own)]
    # labels still cover exactly the assistant turns
    encoded = empty.encode_conversation(CONVERSATION, [red()])
    supervised = empty.decode(encoded["input_ids"][encoded["labels"] != IGNORE_INDEX])
    assert supervised == "A red circle.<|im_end|>Demo response.<|im_end|>"
    empty.save_pretrained(tmp_path)
    assert WingsProcessor.from_pretrained(tmp_path).system_prompt == ""
    default.save_pretrained(tmp_path / "default")
    assert WingsProcessor.from_pretrained(tmp_path / "default").system_prompt is None


def test_batch_call_pads_left_for_generation_and_decodes_without_image_tokens(processor):
    prompts = [
        [{"role": "user", "content": "<image>\nWhat is in the image?"}],
        [{"role": "user", "content": "Hello"}],
    ]
    batch = processor(conversations=prompts, images=[[red()], []])
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape == (1, 3, 32, 32)
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][:, -1].tolist() == [1, 1]  # left padded
    assert int(batch["image_token_mask"].sum()) == SEQ
    text = processor.batch_decode(batch["input_ids"][:, :], skip_special_tokens=False)[0]
    assert text.endswith(processor.render(prompts[0], add_generation_prompt=True).replace("<image>", ""))
    single = processor(text="<image> hi", images=[red()])
    assert single["input_ids"].shape == (
        1,
        SEQ + len(processor.tokenizer(" hi", add_special_tokens=False)["input_ids"]),
    )


def test_auto_processor_loads_a_saved_processor(tmp_path, chatml_processor):
    wings = pytest.importorskip("wings")
    from transformers import AutoProcessor

    AutoProcessor.register(wings.WingsConfig, WingsProcessor, exist_ok=True)
    chatml_processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, WingsProcessor) and loaded.image_token_id == chatml_processor.image_token_id


@pytest.mark.parametrize("side", ["left", "right"])
def test_collator_pads_either_side(side):
    def sample(length, images):
        ids = torch.arange(1, length + 1)
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": ids.clone(),
            "image_token_mask": ids > 100,
            "pixel_values": torch.full((images, 3, 2, 2), float(length)),
        }

    batch = WingsCollator(pad_token_id=0, padding_side=side)([sample(3, 1), sample(5, 0), sample(2, 2)])
    assert batch["input_ids"].shape == (3, 5) and batch["image_token_mask"].dtype == torch.bool
    row = [1, 2, 0, 0, 0] if side == "right" else [0, 0, 0, 1, 2]
    assert batch["input_ids"][2].tolist() == row and batch["attention_mask"][2].tolist() == [int(x > 0) for x in row]
    assert batch["labels"][2].tolist() == [x if x else -100 for x in row]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [3.0, 2.0, 2.0]  # in order of appearance
    text_only = WingsCollator(0, pad_to_multiple_of=8)([sample(3, 0)])
    assert "pixel_values" not in text_only and text_only["input_ids"].shape == (1, 8)
