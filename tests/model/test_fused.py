"""The fast path (`fused.py`) computes what the formulas (`learners.py`, `WingsLayer.forward`) say: same outputs and
same gradients, over whole models (padding, several images, text-only samples, training mode)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.fixtures.models import image_ids, randomize_learners, tiny_wings


def batch(model, training_text_only: bool = False):
    """Left-padded batch: two images in one sample, one in another, none in the third."""
    image = image_ids(model)
    rows = [[5, 6] + image + [7, 8] + image + [9, 10, 11], [12] + image + [13, 14, 15, 16], [17, 18, 19, 20, 21]]
    if training_text_only:
        rows = [[22, 23, 24, 25], [26, 27, 28, 29, 30, 31]]
    rows = [[0] * (max(map(len, rows)) - len(row)) + row for row in rows]  # left padding
    ids = torch.tensor(rows)
    mask = (ids != 0).long()
    images = sum(row.count(model.config.image_token_id) for row in rows) // model.config.image_seq_length
    size = model.config.vision_config.image_size
    pixels = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(3)) if images else None
    labels = ids.masked_fill((mask == 0) | (ids == model.config.image_token_id), -100)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels)


def run(model, inputs, path: str):
    model.learner_path = path
    model.zero_grad()
    loss = model(**inputs, use_cache=False).loss
    loss.backward()
    with torch.no_grad():
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), logits, grads


@pytest.mark.parametrize(
    "family,mode", [("qwen2", "wings"), ("llama", "wings"), ("qwen3", "wings"), ("mistral", "visual")]
)
def test_fused_path_equals_the_formulas_outputs_and_gradients(family, mode):
    model = tiny_wings(family, learners=mode)
    randomize_learners(model)
    inputs = batch(model)
    fused_loss, fused_logits, fused_grads = run(model, inputs, "fused")
    plain_loss, plain_logits, plain_grads = run(model, inputs, "plain")
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(fused_logits[mask], plain_logits[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_loss, plain_loss, atol=1e-6, rtol=1e-6)
    learner_grads = [name for name in plain_grads if name.startswith("wings_layers.")]
    assert learner_grads and set(fused_grads) == set(plain_grads)
    for name in plain_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    # The learners do act here (the equality above is not between two copies of the base LLM).
    baseline = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in baseline.wings_layers.parameters():
            parameter.zero_()
        unlearned = baseline(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits
        assert (unlearned - fused_logits)[mask].abs().max() > 1e-3


def test_fused_path_equals_the_formulas_on_a_text_only_training_batch():
    """In training every rank runs the visual modules, even on a batch without images (an empty visual slot)."""
    model = tiny_wings("qwen2").train()
    randomize_learners(model)
    inputs = batch(model, training_text_only=True)
    fused_loss, _, fused_grads = run(model, inputs, "fused")
    plain_loss, _, plain_grads = run(model, inputs, "plain")
    torch.testing.assert_close(fused_loss, plain_loss, atol=1e-6, rtol=1e-6)
    assert any(name.startswith("wings_layers.0.visual_learner") for name in plain_grads)
    assert set(fused_grads) == set(plain_grads)
    for name in plain_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_formulas_path_refuses_a_kv_cache():
    model = tiny_wings("qwen2")
    model.learner_path = "plain"
    with pytest.raises(ValueError, match="use_cache=False"):
        model(input_ids=torch.tensor([[5, 6, 7]]), use_cache=True)


def test_learners_attend_in_float32_under_cpu_autocast():
    """CPU mixed precision: the learners' attention runs in float32 (bf16's backward is slow on a CPU), on the
    bf16 inputs autocast gives it, and gradients reach them."""
    from wings.model.fused import attend

    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(2, 5, 4, 8, generator=generator).bfloat16().requires_grad_()  # (B, L, H, D)
    keys, values = (torch.randn(2, 4, 3, 8, generator=generator).bfloat16() for _ in range(2))  # (B, H, T, D)
    mask = torch.zeros(2, 1, 5, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = attend(queries, keys, values, mask)
    expected = attend(queries.float(), keys.float(), values.float(), mask)
    assert mixed.dtype == torch.float32
    assert torch.equal(mixed, expected)
    mixed.sum().backward()
    assert queries.grad is not None and queries.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["wings", "visual"])
def test_learners_at_their_zero_init_leave_the_llms_gradients_as_without_learners(mode):
    """B = 0: the learners add nothing, forward or backward, so the LLM trains exactly as the LLaVA-style model."""
    with_learners = tiny_wings("llama", learners=mode).train()
    without = tiny_wings("llama", learners="none").train()
    shared = {k: v for k, v in with_learners.state_dict().items() if not k.startswith("wings_layers.")}
    assert without.load_state_dict(shared, strict=False).missing_keys == []
    inputs = batch(with_learners)
    _, _, learner_grads = run(with_learners, inputs, "fused")
    _, _, plain_grads = run(without, inputs, "fused")
    llm = [name for name in plain_grads if name.startswith("language_model.")]
    assert len(llm) > 10 and any(plain_grads[name].abs().max() > 0 for name in llm)
    for name in llm:
        torch.testing.assert_close(learner_grads[name], plain_grads[name], atol=1e-6, rtol=1e-5, msg=name)
