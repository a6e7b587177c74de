"""Saving and loading, bad input, the labelled-only loss, gradients, and the zero-weighted pass."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForImageTextToText, GPT2Config, GPT2LMHeadModel

from tests.fixtures.models import randomize_learners, sample, text_config, tiny_wings, vision_config
from wings import WingsConfig, WingsForConditionalGeneration
from wings.model.modeling_wings import PARAMETER_GROUPS


# ----- save / load ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "family,tower,mode", [("qwen2", "siglip", "wings"), ("llama", "clip", "visual"), ("qwen3", "siglip", "none")]
)
def test_save_load_round_trip_is_exact_with_auto_classes(tmp_path, family, tower, mode):
    model = tiny_wings(family, tower, learners=mode, wings_layers=[0, 2] if mode != "none" else None)
    randomize_learners(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "wings"

    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, WingsConfig) and config.learners == mode
    for loader in (AutoModelForImageTextToText, WingsForConditionalGeneration):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is WingsForConditionalGeneration
        original, reloaded = model.state_dict(), loaded.state_dict()
        assert original.keys() == reloaded.keys()
        assert all(torch.equal(original[key], reloaded[key]) for key in original)
        ids, pixels = sample(model, images=2)
        with torch.no_grad():
            assert torch.equal(
                model(input_ids=ids, pixel_values=pixels).logits, loaded(input_ids=ids, pixel_values=pixels).logits
            )


def test_checkpoint_keeps_the_llm_weight_names(tmp_path):
    """The LLM's weights keep their own names under `language_model.`, so the base LLM can be read back."""
    model = tiny_wings("qwen2")
    llm_keys = {f"language_model.{key}" for key in model.language_model.state_dict()}
    assert llm_keys <= set(model.state_dict())


def test_stage_two_config_adds_fresh_textual_learners_to_a_stage_one_checkpoint(tmp_path):
    aligned = tiny_wings("qwen2", learners="visual")
    randomize_learners(aligned)
    aligned.save_pretrained(tmp_path)
    instruct = WingsForConditionalGeneration.from_pretrained(tmp_path, learners="wings").eval()
    assert instruct.config.learners == "wings"
    for index, layer in instruct.wings_layers.items():
        old = aligned.wings_layers[index].visual_learner.state_dict()
        assert all(torch.equal(old[k], v) for k, v in layer.visual_learner.state_dict().items())
        assert torch.count_nonzero(layer.textual_learner.output.up.weight) == 0  # B = 0: adds nothing yet
        assert torch.count_nonzero(layer.router.proj.weight) == 0


@pytest.mark.parametrize("initial", [0.5, 0.9])
def test_stage_two_routers_start_at_the_configured_visual_weight(tmp_path, initial):
    """Routers created for stage 2 give w_v = router_init_visual_weight at every token that sees an image (and
    w_v = 0, w_t = 1 before it), whatever the attention mass; the learners still add nothing at B = 0."""
    aligned = tiny_wings("qwen2", learners="visual")
    aligned.save_pretrained(tmp_path)
    instruct = WingsForConditionalGeneration.from_pretrained(
        tmp_path, learners="wings", router_init_visual_weight=initial
    ).eval()
    has_visual = torch.tensor([[False, True, True]])
    mass = torch.rand(1, 3, instruct.config.text_config.num_attention_heads)
    for layer in instruct.wings_layers.values():
        visual_weight, textual_weight = layer.router(mass, has_visual)
        torch.testing.assert_close(visual_weight[0, :, 0], torch.tensor([0.0, initial, initial]))
        torch.testing.assert_close(textual_weight[0, :, 0], torch.tensor([1.0, 1 - initial, 1 - initial]))
    ids, pixels = sample(instruct, images=1)
    with torch.no_grad():
        torch.testing.assert_close(
            instruct(input_ids=ids, pixel_values=pixels).logits,
            aligned.eval()(input_ids=ids, pixel_values=pixels).logits,
            atol=1e-6,
            rtol=0,
        )


# ----- bad input -------------------------------------------------------------------------------------------------
def test_more_or_fewer_images_than_placeholders_is_a_clear_error():
    model = tiny_wings()
    ids, pixels = sample(model, images=2)
    with pytest.raises(ValueError, match="placeholders for 2 image\\(s\\) but pixel_values holds 1"):
        model(input_ids=ids, pixel_values=pixels[:1])
    with pytest.raises(ValueError, match="placeholders for 2 image\\(s\\) but pixel_values holds 3"):
        model(input_ids=ids, pixel_values=torch.cat([pixels, pixels[:1]]))
    with pytest.raises(ValueError, match="not multiples of 4"):
        model(input_ids=ids[:, :-9], pixel_values=pixels)  # cut inside the second image


def test_images_without_a_vision_tower_is_a_clear_error():
    torch.manual_seed(0)
    model = WingsForConditionalGeneration(WingsConfig(text_config=text_config(), vision_config=None)).eval()
    assert model.vision_tower is None and model.projector is None
    with pytest.raises(ValueError, match="no vision tower"):
        model(input_ids=torch.tensor([[1] + [model.config.image_token_id] * 4]), pixel_values=torch.zeros(1, 3, 16, 16))


def test_unsupported_llm_layout_is_rejected_before_any_computation():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="GPT2LMHeadModel is not supported.*no decoder layers at `model.layers`"):
        WingsForConditionalGeneration.from_llm_and_vision(gpt2, None)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="learners='both' is not one of"):
        WingsConfig(text_config=text_config(), vision_config=vision_config(), learners="both")
    with pytest.raises(ValueError, match=r"wings_layers \[7\] are outside the LLM's layers 0..2"):
        WingsConfig(text_config=text_config(), vision_config=vision_config(), wings_layers=[0, 7])
    with pytest.raises(ValueError, match=r"router_init_visual_weight must be in \(0, 1\).*got 1.0"):
        WingsConfig(text_config=text_config(), vision_config=vision_config(), router_init_visual_weight=1.0)


def test_labels_with_image_ids_are_a_clear_error():
    model = tiny_wings()
    ids, pixels = sample(model)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model(input_ids=ids, pixel_values=pixels, labels=ids)


# ----- loss ------------------------------------------------------------------------------------------------------
def test_loss_uses_the_lm_head_only_at_labelled_positions_and_equals_the_full_loss():
    model = tiny_wings("llama")
    randomize_learners(model)
    ids, pixels = sample(model, images=1)
    labels = torch.full_like(ids, -100)
    labels[0, -4:] = ids[0, -4:]  # an "answer" of four tokens
    rows = []
    handle = model.language_model.lm_head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape))
    with torch.no_grad():
        loss = model(input_ids=ids, pixel_values=pixels, labels=labels).loss
    handle.remove()
    assert rows == [torch.Size([4, 32])]  # 4 labelled next-token positions, not the whole sequence
    with torch.no_grad():
        full = model(input_ids=ids, pixel_values=pixels).logits
    expected = F.cross_entropy(full[0, :-1], labels[0, 1:], ignore_index=-100)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)


def test_loss_can_be_normalised_by_the_tokens_of_the_whole_accumulated_batch():
    model = tiny_wings()
    ids, _ = sample(model, images=0)
    labels = ids.clone()
    with torch.no_grad():
        mean = model(input_ids=ids, labels=labels).loss
        summed_over_20 = model(input_ids=ids, labels=labels, num_items_in_batch=20).loss
    torch.testing.assert_close(summed_over_20, mean * (ids.shape[1] - 1) / 20)


# ----- gradients -------------------------------------------------------------------------------------------------
def grads_by_group(model):
    return {group: [p.grad for _, p in params] for group, params in model.parameter_groups().items()}


def test_parameter_groups_cover_every_parameter_once():
    model = tiny_wings()
    groups = model.parameter_groups()
    assert set(groups) == set(PARAMETER_GROUPS)
    names = [name for params in groups.values() for name, _ in params]
    assert sorted(names) == sorted(name for name, _ in model.named_parameters())
    assert all(groups[group] for group in PARAMETER_GROUPS)


def test_gradient_reaches_exactly_the_trainable_groups():
    """LLM and tower frozen (as in the align stage): only projector and learners get gradients, all of them."""
    model = tiny_wings("qwen2").train()
    randomize_learners(model)
    for group in ("llm", "vision_tower"):
        for _, parameter in model.parameter_groups()[group]:
            parameter.requires_grad_(False)
    ids, pixels = sample(model, images=1)
    model(input_ids=ids, pixel_values=pixels, labels=torch.where(ids < 96, ids, -100)).loss.backward()
    grads = grads_by_group(model)
    assert all(g is None for g in grads["llm"] + grads["vision_tower"])
    for group in ("projector", "visual_learners", "textual_learners", "routers"):
        assert all(g is not None and g.abs().sum() > 0 for g in grads[group]), group


def test_visual_mode_never_touches_a_textual_learner():
    model = tiny_wings("qwen2", learners="visual").train()
    assert all(layer.textual_learner is None and layer.router is None for layer in model.wings_layers.values())
    assert not model.parameter_groups()["textual_learners"] and not model.parameter_groups()["routers"]


def test_text_only_training_batch_still_runs_every_module_with_zero_weight():
    """DDP / ZeRO-3: a rank without images must still produce (zero) gradients for the visual modules."""
    model = tiny_wings("qwen2").train()
    randomize_learners(model)
    ids, pixels = sample(model, images=1)
    model(input_ids=ids, pixel_values=pixels, labels=torch.where(ids < 96, ids, -100)).loss.backward()
    used_with_images = {name for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    text = torch.tensor([[5, 6, 7, 8, 9]])
    loss = model(input_ids=text, labels=text).loss
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loss, model(input_ids=text, labels=text).loss)  # the pass adds exactly 0
    loss.backward()
    used_without = {name for name, p in model.named_parameters() if p.grad is not None}
    assert used_without == used_with_images  # every rank runs the same modules
    for group in ("vision_tower", "projector", "visual_learners", "routers"):
        grads = [p.grad for name, p in model.parameter_groups()[group] if p.grad is not None]
        assert grads and all(torch.count_nonzero(g) == 0 for g in grads), group
    assert any(torch.count_nonzero(p.grad) for _, p in model.parameter_groups()["textual_learners"])


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    results = []
    for checkpointing in (False, True):
        model = tiny_wings("llama").train()
        randomize_learners(model)
        if checkpointing:
            model.activation_checkpointing_enable()
        ids, pixels = sample(model, images=2)
        loss = model(input_ids=ids, pixel_values=pixels, labels=torch.where(ids < 96, ids, -100)).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4)


def test_unknown_llm_or_vision_tower_names_are_clear_errors(tmp_path):
    from wings.model.builder import load_vision_tower
    from wings.model.registry import load_llm

    with pytest.raises(FileNotFoundError, match="cannot load the LLM .*not a registry name"):
        load_llm(str(tmp_path / "no-such-llm"))
    with pytest.raises(FileNotFoundError, match="vision tower 'org/no-such-tower' is not a local directory"):
        load_vision_tower("org/no-such-tower")


def test_generate_takes_the_processors_batch_as_it_is(tmp_path):
    """`model.generate(**processor(...))` as with transformers' LLaVA, through the Auto classes of a saved model."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tests.fixtures.models import tiny_checkpoint

    folder = tiny_checkpoint(tmp_path / "wings")
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    conversation = [{"role": "user", "content": "<image>\nwhat color is the shape?"}]
    batch = processor(conversations=conversation, images=[Image.new("RGB", (20, 12), (200, 30, 30))])
    assert "image_token_mask" in batch  # the processor's extra key must not stop generate
    with torch.no_grad():
        output = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        again = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False, use_cache=False)
    assert output.shape == (1, batch["input_ids"].shape[1] + 4) and torch.equal(output, again)
