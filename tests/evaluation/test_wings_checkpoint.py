"""A WINGS checkpoint is evaluated text-only against the LLM it was built from, with no --base."""

from __future__ import annotations

import json

import pytest
from test_cli_and_report import run_eval


def test_fresh_wings_model_has_no_text_forgetting(tiny_dirs, tiny_tokenizer, tmp_path):
    wings_model = pytest.importorskip("wings.model.modeling_wings", reason="WINGS model classes not available")
    model = wings_model.WingsForConditionalGeneration.from_llm_and_vision(str(tiny_dirs["base"]), None)
    assert model.config.base_llm == str(tiny_dirs["base"])
    model.save_pretrained(tmp_path / "wings")
    tiny_tokenizer.save_pretrained(tmp_path / "wings")  # the tokenizer is saved beside the checkpoint
    out = tmp_path / "out"
    assert (
        run_eval(
            [
                "--model",
                str(tmp_path / "wings"),
                "--tasks",
                "retention",
                "--limit",
                "8",
                "--max-new-tokens",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    results = json.loads((out / "results.json").read_text())
    assert results["base"] == str(tiny_dirs["base"])
    scores, base = results["models"][str(tmp_path / "wings")], results["models"][str(tiny_dirs["base"])]
    # The learners start as a no-op (zero-initialised outputs): text behaviour is the base LLM's exactly.
    assert scores["retention_mc"]["acc"] == base["retention_mc"]["acc"]
    assert scores["retention_lm"]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert results["forgetting"][str(tmp_path / "wings")] == pytest.approx(0.0)
