"""bf16, as users train on GPUs: a training step and cached generation run, with the router in fp32.

WINGS.md property 3 (cached = recomputed) is exact in fp32 (test_properties); in bf16 the LLM alone is not exact
either, so the learners' share is checked against what the model without learners shows.
"""

from __future__ import annotations

import torch

from tests.fixtures.models import randomize_learners, sample, tiny_wings


def bf16_model(learners: str = "wings", seed: int = 0):
    model = tiny_wings("qwen2", seed=seed, learners=learners)
    if learners != "none":
        randomize_learners(model, scale=0.1)
    return model.to(torch.bfloat16)


def cached_against_recomputed(model, ids, pixels, steps: int = 5) -> tuple[float, bool]:
    """(largest |logit| difference of cached decoding steps against recomputation, whether greedy tokens agree)."""
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=pixels, use_cache=True)
        cache, tokens, cached = out.cache, ids, [out.logits[:, -1]]
        for _ in range(steps):
            tokens = torch.cat([tokens, cached[-1].argmax(-1, keepdim=True)], 1)
            cached.append(model(input_ids=tokens[:, -1:], cache=cache, use_cache=True).logits[:, -1])
        recomputed = model(input_ids=tokens, pixel_values=pixels, use_cache=False).logits[:, -steps - 1 :]
    cached_logits = torch.stack(cached, 1).float()
    same_tokens = torch.equal(cached_logits.argmax(-1), recomputed.float().argmax(-1))
    return (cached_logits - recomputed.float()).abs().max().item(), same_tokens


def test_bf16_generation_agrees_with_recomputation_as_closely_as_the_model_without_learners():
    errors = {}
    for learners in ("none", "wings"):
        model = bf16_model(learners)
        ids, pixels = sample(model, images=1)
        errors[learners], same_tokens = cached_against_recomputed(model, ids, pixels.to(torch.bfloat16))
        assert same_tokens, learners
    # bf16 rounding of a few more attention sums: the same order as the LLM's own disagreement.
    assert errors["wings"] <= 4 * max(errors["none"], 2**-10), errors
    with torch.no_grad():
        generated = bf16_model().generate(
            input_ids=ids,
            pixel_values=pixels.to(torch.bfloat16),
            max_new_tokens=4,
            min_new_tokens=4,
            do_sample=False,
            pad_token_id=0,
        )
    assert generated.shape[1] == ids.shape[1] + 4


def test_bf16_router_weights_are_fp32_and_match_the_fp32_model():
    weights = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = tiny_wings("qwen2")
        randomize_learners(model, scale=0.1)
        model = model.to(dtype)
        captured = []
        model.wings_layers["1"].router.register_forward_hook(lambda module, args, out: captured.append(out))
        ids, pixels = sample(model, images=1)
        with torch.no_grad():
            model(input_ids=ids, pixel_values=pixels.to(dtype))
        weights[dtype] = torch.cat(captured[0], -1)
    assert weights[torch.bfloat16].dtype == torch.float32  # softmax over the router's logits in fp32
    torch.testing.assert_close(weights[torch.bfloat16], weights[torch.float32], atol=2e-2, rtol=0)


def test_bf16_training_step_runs_and_moves_the_learners():
    model = bf16_model()
    model.train()
    ids, pixels = sample(model, images=1)
    labels = ids.masked_fill(ids == model.config.image_token_id, -100)
    reference = tiny_wings("qwen2")
    randomize_learners(reference, scale=0.1)
    reference.train()
    fp32_loss = reference(input_ids=ids, pixel_values=pixels, labels=labels).loss
    before = model.wings_layers["0"].textual_learner.output.up.weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss = model(input_ids=ids, pixel_values=pixels.to(torch.bfloat16), labels=labels).loss
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)  # cross-entropy over fp32 logits
    torch.testing.assert_close(loss, fp32_loss, atol=0, rtol=2e-2)
    groups = model.parameter_groups()  # the tower's last layer and post-norm are unused (penultimate features)
    gradients = {name: p.grad for group in groups if group != "vision_tower" for name, p in groups[group]}
    assert all(g is not None and g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in gradients.values())
    optimizer.step()
    assert not torch.equal(model.wings_layers["0"].textual_learner.output.up.weight, before)
