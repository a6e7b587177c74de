"""Tiny real tokenizers (trained offline) with real chat templates, and the shared data folder.

No hub access: a byte-level BPE (the Qwen / Llama 3 family's kind of tokenizer) is trained in a few
milliseconds on a small corpus and given a ChatML or Llama-3 chat template written here.
"""

from __future__ import annotations

CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

_CORPUS = [
    "What is in the image? A red circle. Demo instruction 1? Demo response.",
    "Who are they? They're Kane and Gretzka from Bayern Munich. What are they doing?",
    "what color is the shape? blue green red gray teal black yellow brown yes no",
    "does the image contain a rectangle? is there a triangle in the image? circle",
    "You are a helpful assistant. system user assistant Hello there, how are you?",
] * 20


def build_tokenizer(style: str = "chatml"):
    """A tiny byte-level BPE tokenizer wrapped as a transformers fast tokenizer, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if style == "chatml":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    elif style == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    else:
        raise ValueError(style)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS, trainer=trainer)
    if style == "chatml":
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML_TEMPLATE
        )
    else:
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            pad_token="<|end_of_text|>",
            chat_template=LLAMA3_TEMPLATE,
        )
    return tokenizer


def build_processor(style: str = "chatml", image_size: int = 32, patch_size: int = 8, **kwargs):
    """A WingsProcessor on a tiny tokenizer and a tiny SigLIP vision config: 16 visual tokens per image."""
    from transformers import SiglipVisionConfig

    from wings.model.processing_wings import WingsProcessor

    tokenizer = build_tokenizer(style)
    vision_config = SiglipVisionConfig(image_size=image_size, patch_size=patch_size)
    return WingsProcessor.from_vision_config(tokenizer, vision_config, image_token_id=len(tokenizer) + 7, **kwargs)
