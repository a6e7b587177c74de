"""The log-likelihood scorer agrees with lm-evaluation-harness's definitions, batched or not."""

from __future__ import annotations

import pytest
import torch

from wings.evaluation.multiple_choice import (
    build_requests,
    encode_pair,
    evaluate_multiple_choice,
    loglikelihoods,
    prefix_token_id,
    score_docs,
)
from wings.evaluation.task_types import Doc, Task
from wings.evaluation.tasks import TASKS

REQUESTS = [
    ("Question: What is the capital of France?\nAnswer:", " Paris"),
    ("Question: What is the capital of France?\nAnswer:", " the lazy dog"),
    ("Two plus two equals ", "four."),  # trailing space moves into the continuation
    ("", "Once upon a time"),  # empty context: the prefix token stands in
    ("The quick brown fox", " jumps over the lazy dog. A cat sat on the mat."),
]


def by_hand(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of log p(continuation token | everything before), from one full forward pass."""
    context_ids, continuation_ids = encode_pair(tokenizer, context, continuation)
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(log_probs[len(context_ids) + i - 1, t].item() for i, t in enumerate(continuation_ids))


def test_encode_pair_splits_like_lm_eval(tiny_tokenizer):
    context_ids, continuation_ids = encode_pair(tiny_tokenizer, "Two plus two equals ", "four.")
    assert context_ids == tiny_tokenizer.encode("Two plus two equals")
    assert context_ids + continuation_ids == tiny_tokenizer.encode("Two plus two equals four.")
    context_ids, continuation_ids = encode_pair(tiny_tokenizer, "", "Once upon")
    assert context_ids == [prefix_token_id(tiny_tokenizer)] == [tiny_tokenizer.bos_token_id]
    assert continuation_ids == tiny_tokenizer.encode("Once upon")


def test_loglikelihood_equals_hand_computation(tiny_model, tiny_tokenizer):
    scores = loglikelihoods(tiny_model, tiny_tokenizer, REQUESTS, batch_size=3)
    for (context, continuation), (score, _) in zip(REQUESTS, scores):
        assert score == pytest.approx(by_hand(tiny_model, tiny_tokenizer, context, continuation), abs=1e-4)


def test_batched_equals_unbatched_and_is_deterministic(tiny_model, tiny_tokenizer):
    one = loglikelihoods(tiny_model, tiny_tokenizer, REQUESTS, batch_size=1)
    many = loglikelihoods(tiny_model, tiny_tokenizer, REQUESTS, batch_size=8)
    again = loglikelihoods(tiny_model, tiny_tokenizer, REQUESTS, batch_size=8)
    assert [s for s, _ in one] == pytest.approx([s for s, _ in many], abs=1e-4)
    assert many == again
    assert all(isinstance(greedy, bool) for _, greedy in many)


def test_acc_and_acc_norm_by_hand():
    # acc: argmax of the sums; acc_norm: argmax of sum / characters of the choice (no delimiter).
    doc = Doc("0", "Q", ["a", "bbbb"], gold=1)
    assert score_docs([doc], [[-2.0, -4.0]]) == [{"acc": 0.0, "acc_norm": 1.0}]  # -2/1 < -4/4
    doc = Doc("1", "Q", ["cc", "d"], gold=0)
    assert score_docs([doc], [[-1.0, -3.0]]) == [{"acc": 1.0, "acc_norm": 1.0}]


def test_evaluate_matches_scores_computed_by_hand(tiny_model, tiny_tokenizer):
    task = Task("toy", "multiple_choice", fewshot_split=None)
    docs = [
        Doc("0", "Question: What is the capital of France?\nAnswer:", ["Paris", "the lazy dog", "mat"], 0),
        Doc("1", "Two plus two equals", ["four.", "one hundred.", "a cat"], 0),
    ]
    expected = []
    for doc in docs:
        lls = [by_hand(tiny_model, tiny_tokenizer, doc.question, " " + choice) for choice in doc.choices]
        expected.append(score_docs([doc], [lls])[0])
    result = evaluate_multiple_choice(tiny_model, tiny_tokenizer, task, docs, batch_size=2)
    assert result["acc"] == pytest.approx(sum(e["acc"] for e in expected) / 2)
    assert result["acc_norm"] == pytest.approx(sum(e["acc_norm"] for e in expected) / 2)
    assert result["num_samples"] == 2


def test_prompt_formats_match_lm_eval():
    arc = Doc("x", "Question: Why?\nAnswer:", ["because", "no"], 0)
    assert build_requests(TASKS["arc_easy"], [arc], [[]]) == [
        [("Question: Why?\nAnswer:", " because"), ("Question: Why?\nAnswer:", " no")]
    ]
    shot = Doc("s", "Question: 1?\nAnswer:", ["one", "two"], 1)
    requests = build_requests(TASKS["arc_easy"], [arc], [[shot]])
    assert requests[0][0] == ("Question: 1?\nAnswer: two\n\nQuestion: Why?\nAnswer:", " because")
    mmlu = Doc("m", "What?\nA. a\nB. b\nC. c\nD. d\nAnswer:", ["A", "B", "C", "D"], 2, group="global_facts")
    context, continuation = build_requests(TASKS["mmlu"], [mmlu], [[]])[0][2]
    assert (
        context == "The following are multiple choice questions (with answers) about global facts.\n\n" + mmlu.question
    )
    assert continuation == " C"
    # WinoGrande, partial evaluation: each option completes the context, the rest of the sentence is scored.
    wino = Doc(
        "w", "", ["The cup is full because Anna", "The cup is full because Bob"], 1, shared_continuation="poured."
    )
    assert build_requests(TASKS["winogrande"], [wino], [[]])[0] == [
        ("The cup is full because Anna", " poured."),
        ("The cup is full because Bob", " poured."),
    ]


def test_fewshot_is_reproducible(tiny_model, tiny_tokenizer):
    task = Task("toy", "multiple_choice")
    docs = [Doc(str(i), f"Question: {i}?\nAnswer:", ["yes", "no"], i % 2) for i in range(6)]
    first = evaluate_multiple_choice(tiny_model, tiny_tokenizer, task, docs, docs, num_fewshot=2, batch_size=4)
    second = evaluate_multiple_choice(tiny_model, tiny_tokenizer, task, docs, docs, num_fewshot=2, batch_size=1)
    assert first["acc"] == second["acc"] and first["acc_norm"] == second["acc_norm"]
    with pytest.raises(ValueError, match="needs 9 exemplars"):
        evaluate_multiple_choice(tiny_model, tiny_tokenizer, task, docs, docs, num_fewshot=9)


def test_models_without_logits_to_keep_score_the_same(tiny_model, tiny_tokenizer):
    """Only the continuation positions' logits are computed when the model allows it; the scores do not change."""

    class PlainForward(torch.nn.Module):  # a model whose forward takes no `logits_to_keep`
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    kept = loglikelihoods(tiny_model, tiny_tokenizer, REQUESTS, batch_size=4)
    full = loglikelihoods(PlainForward(tiny_model), tiny_tokenizer, REQUESTS, batch_size=4)
    assert [s for s, _ in kept] == pytest.approx([s for s, _ in full], abs=1e-5)
    assert [g for _, g in kept] == [g for _, g in full]


class RowCounter(torch.nn.Module):
    """The model, counting the rows it is asked to run."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, input_ids, attention_mask, logits_to_keep=None):
        self.rows += input_ids.shape[0]
        return self.model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep)


# Four choices of one token each after a shared context (in the tiny vocabulary " the", " is", " of", " a" are).
MMLU_LIKE = [
    Doc(str(i), f"Question {i}: which word comes next?\nAnswer:", ["the", "is", "of", "a"], i % 4) for i in range(6)
]


def test_one_token_choices_after_a_shared_context_run_the_context_once_with_the_same_scores(tiny_model, tiny_tokenizer):
    requests = [r for rs in build_requests(Task("mmlu_like", "multiple_choice"), MMLU_LIKE, [[]] * 6) for r in rs]
    requests += REQUESTS  # multi-token continuations and one shared context of two of them, mixed in
    shared, separate = RowCounter(tiny_model), RowCounter(tiny_model)
    fast = loglikelihoods(shared, tiny_tokenizer, requests, batch_size=4)
    slow = loglikelihoods(separate, tiny_tokenizer, requests, batch_size=4, share_inputs=False)
    assert (shared.rows, separate.rows) == (6 + len(REQUESTS), 6 * 4 + len(REQUESTS))
    assert [greedy for _, greedy in fast] == [greedy for _, greedy in slow]
    assert [score for score, _ in fast] == pytest.approx([score for score, _ in slow], abs=1e-5)
    for (context, continuation), (score, _) in zip(requests, fast):
        assert score == pytest.approx(by_hand(tiny_model, tiny_tokenizer, context, continuation), abs=1e-4)
    fast_scores = score_docs(MMLU_LIKE, [[s for s, _ in fast[4 * i : 4 * i + 4]] for i in range(6)])
    slow_scores = score_docs(MMLU_LIKE, [[s for s, _ in slow[4 * i : 4 * i + 4]] for i in range(6)])
    assert fast_scores == slow_scores


ARC_LIKE = [
    Doc(
        str(i),
        f"Question: what does the {'quick brown fox' if i % 2 else 'cat'} do?\nAnswer:",
        ["jumps over the lazy dog", "sat on the mat", "lived by the sea", "is the capital of France"],
        i % 4,
    )
    for i in range(5)
]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_choices_sharing_a_context_run_it_once_with_a_kv_cache_and_score_the_same(family, tiny_tokenizer, monkeypatch):
    from tests.fixtures.models import make_model
    from wings.evaluation import multiple_choice, shared_prefix

    model = make_model(len(tiny_tokenizer), seed=3, family=family)
    calls = []

    def spy(*args):
        logits = shared_prefix.prefix_shared_logits(*args)
        calls.append(logits is not None)
        return logits

    monkeypatch.setattr(multiple_choice, "prefix_shared_logits", spy)
    requests = [r for rs in build_requests(Task("arc_like", "multiple_choice"), ARC_LIKE, [[]] * 5) for r in rs]
    shared = loglikelihoods(model, tiny_tokenizer, requests, batch_size=8)
    whole = loglikelihoods(model, tiny_tokenizer, requests, batch_size=8, share_inputs=False)
    assert calls and all(calls)  # the cache was shared in every batch
    assert [s for s, _ in shared] == pytest.approx([s for s, _ in whole], abs=1e-5)
    assert [g for _, g in shared] == [g for _, g in whole]
    for (context, continuation), (score, _) in zip(requests, shared):
        assert score == pytest.approx(by_hand(model, tiny_tokenizer, context, continuation), abs=1e-4)
    per_doc = lambda scores: [[s for s, _ in scores[4 * i : 4 * i + 4]] for i in range(5)]  # noqa: E731
    assert score_docs(ARC_LIKE, per_doc(shared)) == score_docs(ARC_LIKE, per_doc(whole))
