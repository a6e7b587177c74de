"""FlashAttention 2 / 3 (WINGS.md property 6), run on a CPU through a pure-torch stand-in for the flash packages."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from tests.fixtures import flash_stand_in
from tests.fixtures.models import COMMON, randomize_learners, sample, text_config, tiny_wings, vision_config
from wings import WingsConfig, WingsForConditionalGeneration
from wings.analysis.attention_shift import sample_segment_sums

FLASH = ["flash_attention_2", "flash_attention_3"]
GREEDY = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)


@pytest.fixture(autouse=True)
def flash_packages(monkeypatch):
    flash_stand_in.installed(monkeypatch)


def built(backend: str, family: str = "qwen2", config: WingsConfig | None = None) -> WingsForConditionalGeneration:
    torch.manual_seed(0)
    if config is None:
        config = WingsConfig(text_config=text_config(family), vision_config=vision_config())
    config._attn_implementation = backend
    model = WingsForConditionalGeneration(config).eval()
    randomize_learners(model)
    return model


def outputs_and_router_weights(model, ids, pixels, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    captured = []
    hooks = [
        layer.router.register_forward_hook(lambda module, args, out: captured.append(torch.cat(out, -1)))
        for layer in model.wings_layers.values()
    ]
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pixels, **kwargs).logits
    for hook in hooks:
        hook.remove()
    return logits, torch.stack(captured)


@pytest.mark.parametrize("family", ["qwen2", "llama"])
@pytest.mark.parametrize("backend", FLASH)
def test_flash_gives_the_outputs_and_router_weights_of_sdpa(backend, family):
    reference, flash = built("sdpa", family), built(backend, family)
    ids, pixels = sample(reference, images=2)
    want = outputs_and_router_weights(reference, ids, pixels)
    got = outputs_and_router_weights(flash, ids, pixels)
    assert flash.language_model.config._attn_implementation == f"wings_{backend}"
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=0)


def left_padded_pair(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids_a, pixels_a = sample(model, images=1, seed=3)
    ids_b, pixels_b = sample(model, text_before=(9,), images=1, text_after=(12, 13), seed=4)
    pad = ids_a.shape[1] - ids_b.shape[1]
    batch = torch.cat([ids_a, torch.cat([torch.zeros(1, pad, dtype=torch.long), ids_b], 1)])
    mask = torch.cat([torch.ones_like(ids_a), torch.cat([torch.zeros(1, pad), torch.ones_like(ids_b)], 1).long()])
    return batch, mask, torch.cat([pixels_a, pixels_b])


def test_flash_left_padded_batch_runs_varlen_and_equals_sdpa():
    reference, flash = built("sdpa"), built("flash_attention_2")
    ids, mask, pixels = left_padded_pair(reference)
    want = outputs_and_router_weights(reference, ids, pixels, attention_mask=mask)
    got = outputs_and_router_weights(flash, ids, pixels, attention_mask=mask)
    real = mask.bool()
    torch.testing.assert_close(got[0][real], want[0][real], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1][:, real], want[1][:, real], atol=1e-5, rtol=0)


def test_flash_decoding_equals_sdpa_and_recomputation():
    reference, flash = built("sdpa"), built("flash_attention_2")
    ids, mask, pixels = left_padded_pair(reference)
    with torch.no_grad():
        cached = flash.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, **GREEDY)
        recomputed = flash.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, use_cache=False, **GREEDY)
        sdpa = reference.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, **GREEDY)
    assert torch.equal(cached, recomputed)
    assert torch.equal(cached, sdpa)


@pytest.mark.parametrize("learners", ["wings", "none"])
def test_attention_shift_kernel_under_flash_equals_sdpa(learners):
    torch.manual_seed(0)
    sums = {}
    for backend in ("sdpa", "flash_attention_2"):
        model = tiny_wings("llama", attn=backend, learners=learners)
        randomize_learners(model)
        ids, pixels = sample(model, text_before=(5, 6, 7, 8), text_after=(9, 10, 11))
        sums[backend] = sample_segment_sums(model, ids, pixels)
    torch.testing.assert_close(sums["flash_attention_2"], sums["sdpa"], atol=1e-5, rtol=0)
    base = AutoModelForCausalLM.from_config(text_config("qwen2"), attn_implementation="flash_attention_2").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    flash_sums = sample_segment_sums(base, ids, before_length=3)
    base.set_attn_implementation("sdpa")
    torch.testing.assert_close(flash_sums, sample_segment_sums(base, ids, before_length=3), atol=1e-5, rtol=0)


def test_head_size_256_runs_under_flash_and_equals_sdpa():
    """256 + the router's indicator channels is over flash's limit: the mass comes from a second kernel call."""
    wide = {**COMMON, "hidden_size": 512, "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64}

    def config() -> WingsConfig:
        return WingsConfig(text_config=Qwen2Config(**wide), vision_config=vision_config())

    reference, flash = built("sdpa", config=config()), built("flash_attention_2", config=config())
    ids, pixels = sample(reference, images=1)
    with pytest.raises(RuntimeError, match="at most 256"):  # the limit the stand-in keeps, as the real kernel
        flash_stand_in.flash_attn_func(*torch.zeros(3, 1, 4, 1, 264))
    want = outputs_and_router_weights(reference, ids, pixels)
    got = outputs_and_router_weights(flash, ids, pixels)
    assert flash.language_model.model.layers[0].self_attn.head_dim == 256
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=0)


def test_training_config_offers_the_flash_backends_and_rejects_others(tmp_path):
    from wings.training.arguments import build_config

    def config(backend: str) -> dict:
        return {
            "model": {"llm": "smollm2-135m-instruct", "vision": "siglip-scratch-32", "attn_implementation": backend},
            "data": {"datasets": [{"path": str(tmp_path / "train.json")}]},
            "training": {"output_dir": str(tmp_path / "out")},
        }

    for backend in ("sdpa", "eager", *FLASH):
        assert build_config(config(backend)).model.attn_implementation == backend
    with pytest.raises(ValueError, match="model.attn_implementation must be one of .*flash_attention_2.*got 'flash'"):
        build_config(config("flash"))
