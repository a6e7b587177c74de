"""A checkpoint saved without the (frozen) LLM loads the LLM as that LLM loads alone, builds the rest on the meta
device and fills it from the checkpoint: identical weights and outputs, no random initialisation of the LLM."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, Qwen2Config, initialization

from tests.fixtures.models import COMMON, randomize_learners, sample, text_config, vision_config
from wings import WingsForConditionalGeneration


@pytest.fixture
def partial_checkpoint(tmp_path):
    """(the WINGS model, its checkpoint directory without the LLM's weights, the LLM's directory)."""
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(text_config("llama")).save_pretrained(tmp_path / "llm")
    model = WingsForConditionalGeneration.from_llm_and_vision(
        str(tmp_path / "llm"), AutoModel.from_config(vision_config())
    ).eval()
    randomize_learners(model)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("language_model.")}
    model.config.llm_checkpoint = str(tmp_path / "llm")
    model.save_pretrained(tmp_path / "wings", state_dict=state)
    return model, tmp_path / "wings", tmp_path / "llm"


def test_partial_checkpoint_loads_identical_weights_without_initialising_the_llm(partial_checkpoint, monkeypatch):
    model, directory, _ = partial_checkpoint
    drawn = []  # every tensor transformers' weight initialisation writes into
    for name, function in list(initialization.TORCH_INIT_FUNCTIONS.items()):
        monkeypatch.setitem(
            initialization.TORCH_INIT_FUNCTIONS,
            name,
            lambda tensor, *a, f=function, **k: (drawn.append(tensor.data_ptr()), f(tensor, *a, **k))[1],
        )
    loaded = WingsForConditionalGeneration.from_pretrained(directory).eval()
    # (loading the LLM's weights into a randomly initialised LLM, as before, draws every one of them here)
    assert not set(drawn) & {parameter.data_ptr() for parameter in loaded.language_model.parameters()}
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[key], got[key]) for key in want)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), loaded.buffers()))  # rotary tables too
    assert not [name for name, p in loaded.named_parameters() if p.device.type == "meta"]
    ids, pixels = sample(model, images=1)
    with torch.no_grad():
        assert torch.equal(
            loaded(input_ids=ids, pixel_values=pixels).logits, model(input_ids=ids, pixel_values=pixels).logits
        )


def test_partial_checkpoint_keeps_the_loaded_llms_storage(partial_checkpoint):
    """The LLM's tensors are the ones its own loader made (nothing is copied into a second model)."""
    _, directory, llm_directory = partial_checkpoint
    llm = AutoModelForCausalLM.from_pretrained(llm_directory)
    addresses = [parameter.data_ptr() for parameter in llm.parameters()]
    loaded = WingsForConditionalGeneration.from_pretrained(directory, language_model=llm)
    assert [parameter.data_ptr() for parameter in loaded.language_model.parameters()] == addresses


def test_partial_checkpoint_with_another_llm_or_none_says_what_to_do(partial_checkpoint, tmp_path):
    _, directory, _ = partial_checkpoint
    other = {**COMMON, "hidden_size": 48}
    AutoModelForCausalLM.from_config(Qwen2Config(**other)).save_pretrained(tmp_path / "other")
    config = json.loads((directory / "config.json").read_text())
    for source, error, message in (
        (tmp_path / "other", ValueError, "holds an LLM with"),
        (tmp_path / "absent", FileNotFoundError, "is not available here"),
    ):
        config["llm_checkpoint"] = str(source)
        (directory / "config.json").write_text(json.dumps(config))
        with pytest.raises(error, match=message):
            WingsForConditionalGeneration.from_pretrained(directory)
