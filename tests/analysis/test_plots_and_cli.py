"""Plots are written with their JSON; `wings analyze attention-shift` runs end to end on saved tiny LLMs and says
what it left out."""

from __future__ import annotations

import json

import matplotlib
import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.fixtures.models import text_config
from wings.analysis.cli import SampleText, sample_texts, shift_summary, tokenize_samples
from wings.analysis.plots import plot_laws, plot_shift_vs_score
from wings.cli import main

matplotlib.use("Agg")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_laws_plot_and_json(tmp_path):
    curves = {
        "wings": {"V_before": [0.5, 0.4], "V_itself": [0.3, 0.4], "V_after": [0.2, 0.2]},
        "base": {"V_before": [0.7, 0.6], "V_itself": [0.0, 0.0], "V_after": [0.3, 0.4]},
    }
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
        json.dumps({"text": "Question: what colour is <image> the sky? Answer:", "image": "sky.png"})
        + "\n"
        + json.dumps({"id": "cat", "text": "A cat sat on <image> the mat.", "image": "cat.png"})
        + "\n"
        + json.dumps(
            {"id": "two", "text": "The sky <image> and the sea <image> are blue?", "image": ["sky.png", "sea.png"]}
        )
        + "\n"
    )
    out = tmp_path / "analysis"
    argv = ["analyze", "attention-shift", "--data", str(data), "--out", str(out), "--query-tokens", "after"]
    for name, score in zip(names, (0.5, 0.4, 0.3)):
        argv += ["--model", name, "--score", f"{name}={score}"]
    with pytest.warns(UserWarning, match="1 of 3 samples have several images"):
        assert main(argv) == 0
    results = json.loads((out / "attention_shift.json").read_text())
    assert list(results["models"]) == names and results["query_tokens"] == "after"
    for result in results["models"].values():
        assert result["num_samples"] == 3 and [s["id"] for s in result["samples"]] == ["0", "cat", "two"]
        assert result["laws"]["V_itself"] == [0.0, 0.0, 0.0]  # base LLMs get the text with the image removed
        assert result["attention_shift"] is None  # a base LLM sees no image: n/a, never 2
        assert result["num_multi_image"] == 1 and result["samples"][2]["num_images"] == 2
    assert (out / "laws.png").is_file() and (out / "laws.json").is_file()
    # base LLMs have no attention shift: no scatter of shift against score, and the command says why
    assert not (out / "shift_vs_score.png").exists()
    printed = capsys.readouterr().out
    assert printed.count("attention shift n/a (the model sees no image) over 3 samples; 1 with several images") == 3
    assert "needs two or more scored models that see images; 0 given" in printed


def test_the_summary_line_reports_what_was_left_out():
    analysis = {"attention_shift": 0.25, "num_samples": 10, "num_undefined_shift": 2, "num_multi_image": 0}
    assert shift_summary(analysis) == (
        "attention shift 0.2500 over 8 of 10 samples; 2 left out (a constant LAWS curve: no correlation)"
    )
    analysis = {"attention_shift": None, "num_samples": 4, "num_undefined_shift": 0, "num_multi_image": 0}
    assert shift_summary(analysis) == "attention shift n/a (the model sees no image) over 4 samples"


def test_analyze_cli_names_the_bad_sample(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"text": "no image here", "image": "x.png"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl sample 1: needs at least one <image> and one image per "):
        sample_texts(data, tokenizer=None)
    data.write_text(json.dumps({"text": "two <image> and <image> here", "image": "x.png"}) + "\n")
    with pytest.raises(ValueError, match=r"\(found 2 placeholders, 1 images\)"):
        sample_texts(data, tokenizer=None)
    data.write_text(json.dumps({"text": "<image> only after", "image": "x.png"}) + "\n")
    with pytest.raises(ValueError, match="needs text both before the first and after the last <image>"):
        sample_texts(data, tokenizer=None)


def test_samples_are_cut_at_every_image_and_tokenised_apart(tmp_path, tiny_tokenizer):
    data = tmp_path / "two.jsonl"
    data.write_text(
        json.dumps(
            {"id": "s", "text": "The sky <image> and the sea <image> are blue?", "image": ["sky.png", "sea.png"]}
        )
        + "\n"
    )
    (text,) = sample_texts(data, tiny_tokenizer)
    assert text == SampleText(
        "s", ["The sky ", " and the sea ", " are blue?"], [str(tmp_path / "sky.png"), str(tmp_path / "sea.png")]
    )
    (sample,) = tokenize_samples([text], tiny_tokenizer)
    assert sample.before_ids == tiny_tokenizer.encode("The sky ")
    assert sample.between == [(tiny_tokenizer.encode(" and the sea ", add_special_tokens=False), text.images[1])]
    assert sample.after_ids == tiny_tokenizer.encode(" are blue?", add_special_tokens=False)
    assert sample.images == text.images
