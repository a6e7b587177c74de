"""`wings eval` end to end on tiny saved models: the same prompts for every model, deltas, clear errors."""

from __future__ import annotations

import argparse
import json

import pytest

from wings.evaluation.cli import add_parser
from wings.evaluation.report import forgetting, markdown_table


def run_eval(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"), "eval", "")
    args = parser.parse_args(["eval", *argv, "--no-progress"])
    return args.func(args)


@pytest.fixture()
def mc_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [
        {"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 1), "a cat"], "answer": 0}
        for a, b in [(1, 2), (2, 2), (3, 4), (5, 1)]
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_eval_writes_results_and_table(tiny_dirs, mc_file, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 5)
    out = tmp_path / "out"
    argv = [
        "--model",
        str(tiny_dirs["tuned"]),
        "--base",
        str(tiny_dirs["base"]),
        "--tasks",
        f"mc:{mc_file}",
        f"ppl:{text}",
        "retention",
        "--limit",
        "6",
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
    ]
    assert run_eval(argv) == 0
    results = json.loads((out / "results.json").read_text())
    base, tuned = str(tiny_dirs["base"]), str(tiny_dirs["tuned"])
    assert results["base"] == base and set(results["models"]) == {base, tuned}
    assert list(results["tasks"]) == [f"mc:{mc_file}", f"ppl:{text}", "retention_mc", "retention_lm"]
    assert results["models"][base]["retention_lm"]["kl"] == 0.0
    assert results["models"][tuned]["retention_lm"]["kl"] > 0.0
    assert results["models"][base]["retention_mc"]["num_samples"] == 6
    expected = (
        100
        * sum(
            results["models"][base][t]["acc"] - results["models"][tuned][t]["acc"]
            for t in (f"mc:{mc_file}", "retention_mc")
        )
        / 2
    )
    assert results["forgetting"][tuned] == pytest.approx(expected)
    table = (out / "results.md").read_text()
    assert f"| {base} (base) | {tuned} | delta |" in table and "forgetting" in table
    # Reproducible: a second run gives identical numbers.
    assert run_eval(argv[:-1] + [str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "results.json").read_text())["models"] == results["models"]


def test_without_base_the_first_plain_model_is_the_base(tiny_dirs, mc_file, tmp_path):
    assert (
        run_eval(
            [
                "--model",
                str(tiny_dirs["base"]),
                "--model",
                str(tiny_dirs["tuned"]),
                "--tasks",
                f"mc:{mc_file}",
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "results.json").read_text())["base"] == str(tiny_dirs["base"])


def test_clear_errors(tiny_dirs, tmp_path):
    with pytest.raises(ValueError, match="unknown task 'nonsense'"):
        run_eval(["--model", str(tiny_dirs["base"]), "--tasks", "nonsense"])
    with pytest.raises(FileNotFoundError, match="no such folder, and it is neither a registered LLM"):
        run_eval(["--model", str(tmp_path / "no-such-model"), "--tasks", "retention_mc"])
    with pytest.raises(FileNotFoundError, match="--data-dir .* is not a directory"):
        run_eval(["--model", str(tiny_dirs["base"]), "--tasks", "arc_easy", "--data-dir", str(tmp_path / "nope")])
    with pytest.raises(
        FileNotFoundError, match="task arc_easy: split 'test' is not under --data-dir"
    ):  # before any model
        run_eval(["--model", str(tmp_path / "no-such-model"), "--tasks", "arc_easy", "--data-dir", str(tmp_path)])


def test_forgetting_and_table_from_results():
    results = {
        "base": "llm",
        "settings": {"num_fewshot": 0},
        "tasks": {
            "a": {"kind": "multiple_choice", "metrics": ["acc"], "text_only": True},
            "b": {"kind": "multiple_choice", "metrics": ["acc"], "text_only": True},
            "v": {"kind": "multiple_choice", "metrics": ["acc"], "text_only": False},
        },
        "models": {
            "llm": {"a": {"acc": 0.5}, "b": {"acc": 0.8}, "v": {"acc": 0.2}},
            "mllm": {"a": {"acc": 0.4}, "b": {"acc": 0.8}, "v": {"acc": 0.9}},
        },
    }
    assert forgetting(results, "mllm") == pytest.approx(5.0)  # (10 + 0) / 2 points; the visual task is excluded
    assert "| a | acc | 50.00 | 40.00 | -10.00 |" in markdown_table(results)
