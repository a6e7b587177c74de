"""The base LLM's results kept between runs: the same numbers read back; a change of model, data or settings misses."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from wings.evaluation import divergence, runner
from wings.evaluation.cache import BaseResultCache, model_fingerprint
from wings.evaluation.runner import EvalSettings, evaluate_models, load_eval_model


@pytest.fixture()
def mc_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [
        {"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1)], "answer": 0}
        for a, b in [(1, 2), (2, 2), (3, 4)]
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_cached_base_results_equal_fresh_ones_and_skip_the_work(tiny_dirs, mc_file, tmp_path, monkeypatch):
    base, tuned = load_eval_model(str(tiny_dirs["base"])), load_eval_model(str(tiny_dirs["tuned"]))
    tasks = [f"mc:{mc_file}", "retention"]
    fresh = evaluate_models([tuned], base, EvalSettings(tasks, limit=4, max_new_tokens=3, progress=False))
    cached = EvalSettings(tasks, limit=4, max_new_tokens=3, progress=False, cache_dir=tmp_path / "cache")
    first = evaluate_models([tuned], base, cached)
    assert first["models"] == fresh["models"]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 3  # mc, retention_mc, reference continuations

    calls = []
    real = runner.evaluate_multiple_choice

    def counted(model, *args, **kwargs):
        calls.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(runner, "evaluate_multiple_choice", counted)
    monkeypatch.setattr(runner, "reference_sequences", lambda *a, **k: pytest.fail("reference continuations redone"))
    second = evaluate_models([tuned], base, cached)
    assert second["models"] == first["models"]
    assert calls and all(model is tuned.model for model in calls)  # the base was read back, the tuned model scored

    # Another limit (other documents and prompts) is another key: computed again.
    monkeypatch.setattr(runner, "reference_sequences", divergence.reference_sequences)
    calls.clear()
    other = EvalSettings(tasks, limit=2, max_new_tokens=3, progress=False, cache_dir=tmp_path / "cache")
    evaluate_models([tuned], base, other)
    assert any(model is base.model for model in calls)


def test_fingerprint_follows_the_weights(tiny_model, tiny_tokenizer, tmp_path):
    before = model_fingerprint(tiny_model, tiny_tokenizer)
    assert model_fingerprint(copy.deepcopy(tiny_model), tiny_tokenizer) == before
    cache = BaseResultCache(tmp_path, tiny_model, tiny_tokenizer)
    cache.put("mc", ["task", 1], {"acc": 0.5})
    assert cache.get("mc", ["task", 1]) == {"acc": 0.5} and cache.get("mc", ["task", 2]) is None
    changed = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(changed.parameters())[0, 0] += 1.0
    assert model_fingerprint(changed, tiny_tokenizer) != before
    assert BaseResultCache(tmp_path, changed, tiny_tokenizer).get("mc", ["task", 1]) is None
