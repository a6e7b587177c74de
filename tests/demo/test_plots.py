"""The demo's forgetting figure draws what separates the models: differences from the base LLM, KL on a log scale."""

from __future__ import annotations

import pytest

from wings.demo.plots import forgetting_panel, plot_forgetting, plot_training_curves

# The README's default-demo table, as the report passes it (accuracies as fractions).
VALUES = {
    "retention MC acc": {"base LLM": 0.530, "WINGS": 0.533, "LLaVA": 0.537, "LLaVA (WINGS LR)": 0.530},
    "KL from base": {"base LLM": 0.0, "WINGS": 6.23e-6, "LLaVA": 2.72e-4, "LLaVA (WINGS LR)": 3.25e-6},
    "perplexity": {"base LLM": 2.2001, "WINGS": 2.1985, "LLaVA": 2.2091, "LLaVA (WINGS LR)": 2.2003},
}


def test_accuracy_is_drawn_in_points_from_the_base_llm_as_in_the_tables():
    panel = forgetting_panel("retention MC acc", VALUES["retention MC acc"])
    assert panel["models"] == ["WINGS", "LLaVA", "LLaVA (WINGS LR)"] and not panel["log"]
    assert panel["heights"] == pytest.approx([0.3, 0.7, 0.0])
    assert "points" in panel["title"] and "53.0%" in panel["title"]


def test_kl_whose_base_is_zero_is_drawn_on_a_log_scale():
    panel = forgetting_panel("KL from base", VALUES["KL from base"])
    assert panel["log"] and panel["heights"] == [6.23e-6, 2.72e-4, 3.25e-6]
    assert max(panel["heights"]) / min(panel["heights"]) > 80  # on a linear axis from 0 two bars would vanish


def test_perplexity_is_drawn_as_differences_from_the_base_llm():
    panel = forgetting_panel("perplexity", VALUES["perplexity"])
    assert panel["heights"] == pytest.approx([-0.0016, 0.0090, 0.0002])
    assert panel["labels"] == ["-0.0016", "+0.009", "+0.0002"] and "2.2001" in panel["title"]


def test_the_figures_are_written(tmp_path):
    assert plot_forgetting(VALUES, tmp_path / "forgetting.png").stat().st_size > 10_000
    curves = {"wings-align": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}], "llava-instruct": []}
    assert plot_training_curves(curves, tmp_path / "curves.png").stat().st_size > 10_000


def test_a_measure_where_every_model_ties_the_base_still_gets_a_readable_axis():
    panel = forgetting_panel("retention MC acc", {"base LLM": 0.5625, "WINGS": 0.5625, "LLaVA": 0.5625})
    assert panel["heights"] == [0.0, 0.0] and panel["least_range"] == 1.0  # one point either side, not 1e-13
