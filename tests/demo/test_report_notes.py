"""The demo report says what a short run checks, and what the base LLM's easy-vqa row means."""

from __future__ import annotations

from wings.demo.report import BASE_FOOTNOTE, short_run_note
from wings.demo.settings import DemoSettings


def test_a_quick_run_says_it_checks_the_pipeline_not_the_method():
    note = short_run_note(DemoSettings.quick())
    assert note is not None and "checks that the pipeline runs end to end, not the method" in note
    default = DemoSettings.default()
    assert "12 + 2 steps" in note and f"{default.align_steps} + {default.instruct_steps}" in note
    assert short_run_note(DemoSettings.default()) is None


def test_the_base_llm_footnote_explains_its_easy_vqa_row():
    assert BASE_FOOTNOTE.startswith("Base LLM row:") and "question text alone" in BASE_FOOTNOTE
