"""`wings data`: `check` prints a report per file and sets the exit code; `easy-vqa` converts and prints counts."""

from __future__ import annotations

import argparse
import json

import pytest

from tests.fixtures.easy_vqa import fake_easy_vqa
from tests.fixtures.tokenizers import build_processor
from wings.training import data_cli


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="wings")
    data_cli.add_parser(parser.add_subparsers(dest="command"), "data", "check data files and convert data sets")
    args = parser.parse_args(list(argv))
    return args.func(args)


def write(tmp_path, records, name="data.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return str(path)


def turn(speaker, value):
    return {"from": speaker, "value": value}


def test_check_prints_counts_and_problems_and_sets_the_exit_code(tmp_path, capsys):
    good = write(tmp_path, [{"conversations": [turn("human", "Q"), turn("gpt", "A")]}], "good.json")
    assert run_cli("data", "check", good) == 0
    assert "no problems found" in capsys.readouterr().out
    bad = write(
        tmp_path, [{"image": "x.png", "conversations": [turn("human", "<image>"), turn("gpt", "A")]}], "bad.json"
    )
    assert run_cli("data", "check", bad, "--image-folder", "/nowhere") == 1
    assert "record 0: image: image file not found: /nowhere/x.png" in capsys.readouterr().out


def test_check_measures_lengths_with_a_saved_processor(tmp_path, capsys):
    build_processor("chatml").save_pretrained(tmp_path / "processor")
    data = write(
        tmp_path,
        [
            {"conversations": [turn("human", "Q"), turn("gpt", "A")]},
            {"conversations": [turn("human", "Q " * 40), turn("gpt", "A")]},
        ],
    )
    assert run_cli("data", "check", data, "--processor", str(tmp_path / "processor"), "--max-length", "30") == 1
    out = capsys.readouterr().out
    assert "record 1: <record>: " in out and "tokens > max_length 30: the sample would be truncated" in out
    assert "longest sample: " in out and "record 0" not in out
    with pytest.raises(ValueError, match="--processor and --max-length go together"):
        run_cli("data", "check", data, "--max-length", "30")


def test_easy_vqa_converts_and_prints_counts(tmp_path, capsys):
    source, out_dir = fake_easy_vqa(tmp_path / "easy_vqa_data"), tmp_path / "o"
    assert run_cli("data", "easy-vqa", "--out", str(out_dir), "--source", str(source), "--max-turns", "1") == 0
    out = capsys.readouterr().out
    # the builder: 6 training images with 3 questions each, one of them yes/no; one question a conversation
    assert f"train: 6 images, 18 questions (6 yes/no) in 18 conversations -> {out_dir}/train.json" in out
    assert (out_dir / "images" / "test" / "0.png").is_file()
