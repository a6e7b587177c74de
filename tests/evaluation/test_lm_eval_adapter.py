"""`--model wings` in lm-evaluation-harness, on a local task over a local file, agrees with `wings eval`."""

from __future__ import annotations

import json

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness not installed (pip install -e '.[eval]')")

from wings.evaluation.multiple_choice import evaluate_multiple_choice, loglikelihoods  # noqa: E402
from wings.evaluation.runner import load_eval_model  # noqa: E402
from wings.evaluation.tasks import get_task  # noqa: E402

TASK_YAML = """task: local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
doc_to_choice: "{{{{choices}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def test_lm_eval_scores_a_wings_loadable_model_like_wings_eval(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    import wings.evaluation.lm_eval_adapter  # noqa: F401  (registers --model wings)

    data = tmp_path / "mc.jsonl"
    rows = [
        {"question": q, "choices": c, "answer": a}
        for q, c, a in [
            ("What is the capital of France?", ["Paris", "the lazy dog", "mat"], 0),
            ("Two plus two equals what?", ["four", "one hundred", "a cat sat"], 0),
            ("What did the fox jump over?", ["the sea", "the lazy dog"], 1),
            ("Who lived in the village?", ["an old fisherman", "a brown fox", "ten"], 0),
        ]
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "local_mc.yaml").write_text(TASK_YAML.format(data=data))
    out = simple_evaluate(
        model="wings",
        model_args=f"pretrained={tiny_dirs['base']},device=cpu",
        tasks=["local_mc"],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
        batch_size=2,
        log_samples=True,
    )
    theirs = out["results"]["local_mc"]
    loaded = load_eval_model(str(tiny_dirs["base"]))
    task = get_task(f"mc:{data}")
    docs = task.load(None, "file")
    ours = evaluate_multiple_choice(loaded.model, loaded.tokenizer, task, docs, batch_size=3)
    assert theirs["acc,none"] == pytest.approx(ours["acc"]) and theirs["acc_norm,none"] == pytest.approx(
        ours["acc_norm"]
    )
    # And request by request, the same log-likelihoods.
    their_lls = [
        ll
        for sample in sorted(out["samples"]["local_mc"], key=lambda s: s["doc_id"])
        for ll, _ in (r[0] for r in sample["resps"])
    ]
    requests = [(doc.question, " " + choice) for doc in docs for choice in doc.choices]
    our_lls = [ll for ll, _ in loglikelihoods(loaded.model, loaded.tokenizer, requests)]
    assert their_lls == pytest.approx(our_lls, abs=1e-4)
