"""Plots are written with their JSON; `wings analyze attention-shift` runs end to end on saved tiny LLMs."""

from __future__ import annotations

import json
import math

import matplotlib
import pytest
import torch
from transformers import AutoModelForCausalLM

from wings.analysis.plots import plot_laws, plot_shift_vs_score
from wings.cli import main
from tests.model.tiny import text_config

matplotlib.use("Agg")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_laws_plot_and_json(tmp_path):
    curves = {"wings": {"V_before": [0.5, 0.4], "V_itself": [0.3, 0.4], "V_after": [0.2, 0.2]},
              "base": {"V_before": [0.7, 0.6], "V_itself": [0.0, 0.0], "V_after": [0.3, 0.4]}}  # fmt: skip
    png, data = plot_laws(curves, tmp_path / "figs" / "laws.png")
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000
    assert json.loads(data.read_text())["curves"] == curves


def test_shift_vs_score_scatter_reports_pearson(tmp_path):
    points = {"a": (0.1, 0.60), "b": (0.3, 0.50), "c": (0.5, 0.40), "d": (float("nan"), 0.3)}
    png, data, r = plot_shift_vs_score(points, tmp_path / "scatter.png", "arc_easy acc")
    assert r == pytest.approx(-1.0)
    saved = json.loads(data.read_text())
    assert saved["pearson"] == pytest.approx(-1.0) and saved["left_out"] == ["d"]
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_analyze_cli_end_to_end(tmp_path, tiny_tokenizer, capsys):
    names = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        config = text_config("llama")
        config.vocab_size = len(tiny_tokenizer)
        directory = tmp_path / f"llm{seed}"
        AutoModelForCausalLM.from_config(config).save_pretrained(directory)
        tiny_tokenizer.save_pretrained(directory)
        names.append(str(directory))
    data = tmp_path / "samples.jsonl"
    data.write_text(
        json.dumps({"text": "Question: what colour is <image> the sky? Answer:", "image": "sky.png"}) + "\n"
        + json.dumps({"id": "cat", "text": "A cat sat on <image> the mat.", "image": "cat.png"}) + "\n"
    )
    out = tmp_path / "analysis"
    argv = ["analyze", "attention-shift", "--data", str(data), "--out", str(out), "--query-tokens", "after"]
    for name, score in zip(names, (0.5, 0.4, 0.3)):
        argv += ["--model", name, "--score", f"{name}={score}"]
    assert main(argv) == 0
    results = json.loads((out / "attention_shift.json").read_text())
    assert list(results["models"]) == names and results["query_tokens"] == "after"
    for result in results["models"].values():
        assert result["num_samples"] == 2 and [s["id"] for s in result["samples"]] == ["0", "cat"]
        assert result["laws"]["V_itself"] == [0.0, 0.0, 0.0]  # base LLMs get the text with the image removed
        assert result["attention_shift"] is None  # a base LLM sees no image: n/a, never 2
    assert (out / "laws.png").is_file() and (out / "laws.json").is_file()
    # base LLMs have no attention shift: no scatter of shift against score, and the command says why
    assert not (out / "shift_vs_score.png").exists()
    assert "needs two or more scored models that see images; 0 given" in capsys.readouterr().out


def test_analyze_cli_names_the_bad_sample(tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"text": "no image here", "image": "x.png"}) + "\n")
    from wings.analysis.cli import sample_texts

    with pytest.raises(ValueError, match="bad.jsonl sample 1: needs exactly one <image>"):
        sample_texts(data, tokenizer=None)
