"""The `wings` command table: `wings --help` without torch, one --threads option on every computing command."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch

import wings.threads
from wings.cli import COMMANDS, build_parser, main
from wings.threads import THREADS_ENV, choose_threads, measured_threads, set_threads

COMPUTING = [
    ["build"],
    ["train"],
    ["eval"],
    ["chat"],
    ["generate"],
    ["serve"],
    ["analyze", "attention-shift"],
    ["demo"],
]


def test_help_lists_every_command_without_importing_torch_or_transformers():
    script = (
        "import sys, wings_cli\nsys.argv = ['wings', '--help']\ntry:\n    wings_cli.main()\nexcept SystemExit:\n"
        "    pass\nprint('HEAVY', sorted(m for m in ('torch', 'transformers', 'wings') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True)
    assert "HEAVY []" in result.stdout
    for name, _, _ in COMMANDS:
        assert f"    {name} " in result.stdout


def test_a_mistyped_command_is_refused_without_importing_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["evla"])
    assert "invalid choice: 'evla'" in capsys.readouterr().err


def _subparser(parser, words):
    for word in words:
        parser = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[word]
    return parser


@pytest.mark.parametrize("words", COMPUTING, ids=" ".join)
def test_every_computing_command_takes_the_same_threads_option(words):
    parser = _subparser(build_parser(words[0]), words)
    action = next(a for a in parser._actions if "--threads" in a.option_strings)
    assert action.type(" 3") == 3 and THREADS_ENV in action.help and action.help.endswith(".")


@pytest.mark.parametrize("threads", ["0", "-1", "many"])
def test_a_bad_thread_count_is_refused_naming_the_option(threads, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--model", "x", "--threads", threads])
    assert "--threads" in capsys.readouterr().err


def test_threads_come_from_the_option_then_the_environment_then_a_measurement(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(THREADS_ENV, "1")
        assert choose_threads(2) == (2, "--threads")
        assert choose_threads(None) == (1, THREADS_ENV)
        assert set_threads(None) == 1 == torch.get_num_threads()
        monkeypatch.setenv(THREADS_ENV, "")
        number, source = choose_threads(None)
        assert source == "measured" and number >= 1
        monkeypatch.setenv(THREADS_ENV, "four")
        with pytest.raises(ValueError, match=f"{THREADS_ENV}='four'"):
            choose_threads(None)
    finally:
        torch.set_num_threads(before)


class FakeClock:
    """`time.perf_counter` where a timed product costs `seconds[threads]` at torch's current thread count."""

    def __init__(self, seconds: dict[int, float]):
        self.seconds, self.now, self.calls = seconds, 0.0, 0

    def perf_counter(self) -> float:
        self.calls += 1
        if self.calls % 2 == 0:  # the second reading of a pair ends a timing
            self.now += self.seconds[torch.get_num_threads()]
        return self.now


@pytest.mark.parametrize("all_cores_seconds, chosen", [(0.95, 1), (0.85, 4), (1.5, 1)])
def test_more_threads_only_when_at_least_ten_percent_faster(monkeypatch, all_cores_seconds, chosen):
    before = torch.get_num_threads()
    clock = FakeClock({1: 1.0, 4: all_cores_seconds})
    monkeypatch.setattr(wings.threads, "cores", lambda: 4)
    monkeypatch.setattr(wings.threads, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    try:
        assert measured_threads() == chosen
        assert clock.calls == 2 * 3 * 2  # 3 interleaved rounds of both candidates, each timed once
        clock.calls = 0
        assert measured_threads(limit=1) == 1 and clock.calls == 0  # one candidate: nothing to measure
    finally:
        torch.set_num_threads(before)


def test_the_command_sets_the_threads_before_it_runs(tmp_path, capsys):
    before = torch.get_num_threads()
    try:
        assert (
            main(
                [
                    "build",
                    "--llm",
                    str(tmp_path / "missing"),
                    "--vision",
                    "siglip-scratch-32",
                    "--threads",
                    "1",
                    "--out",
                    str(tmp_path / "out"),
                ]
            )
            == 1
        )
        assert torch.get_num_threads() == 1
        assert "threads: 1 (--threads" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def _all_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, __import__("argparse")._SubParsersAction):
            for subparser in action.choices.values():
                yield from _all_parsers(subparser)


def test_every_help_text_of_every_command_ends_its_sentence():
    texts = [
        (p.prog, a.help)
        for p in _all_parsers(build_parser("*"))
        for a in p._actions
        if a.help and a.help != "==SUPPRESS=="
    ]
    assert len(texts) > 100
    assert [t for t in texts if not t[1].endswith((".", "?", "!"))] == []


def test_build_without_out_refuses_and_a_missing_folder_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["build", "--llm", "smollm2-135m-instruct", "--vision", "siglip-scratch-32"])
    assert "the following arguments are required: --out" in capsys.readouterr().err
    missing = tmp_path / "no-llm"
    assert (
        main(
            [
                "build",
                "--llm",
                str(missing),
                "--vision",
                "siglip-scratch-32",
                "--out",
                str(tmp_path / "o"),
                "--threads",
                "1",
            ]
        )
        == 1
    )
    assert f"--llm {missing}: no such folder" in capsys.readouterr().err


def test_eval_writes_to_out_and_keeps_the_old_spelling_hidden():
    parser = _subparser(build_parser("eval"), ["eval"])
    assert parser.parse_args(["--model", "m", "--out", "a"]).out.name == "a"
    assert parser.parse_args(["--model", "m", "--output-dir", "b"]).out.name == "b"
    assert parser.parse_args(["--model", "m"]).out.as_posix() == "runs/eval"
    assert "--output-dir" not in parser.format_help()


def test_train_names_the_command_that_makes_missing_data_and_blames_a_bad_override_on_the_command_line(
    tmp_path, capsys
):
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: {llm: smollm2-135m-instruct}\ndata:\n  datasets:\n    - {path: data/easy-vqa/train.json}\n"
        f"training: {{output_dir: {tmp_path / 'out'}}}\n"
    )
    assert main(["train", "--config", str(config), "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert "training data data/easy-vqa/train.json not found" in err and "data easy-vqa --out data/easy-vqa" in err
    assert main(["train", "--config", str(config), "--threads", "1", "--optim.learning_rate", "1e-3"]) == 1
    err = capsys.readouterr().err
    assert "the command line: unknown keys ['learning_rate'] in section 'optim'" in err and str(config) not in err


def test_iit_configurations_are_readable_in_help():
    parser = _subparser(build_parser("iit"), ["iit", "build"])
    assert "T | T,T | T,T,T | T,T,V | T,V | V" in " ".join(parser.format_help().split())


def test_an_llm_written_as_a_path_that_does_not_exist_is_no_such_folder(tmp_path):
    from wings.model.registry import load_llm

    with pytest.raises(FileNotFoundError, match=__import__("re").escape(f"LLM '{tmp_path / 'gone'}': no such folder")):
        load_llm(tmp_path / "gone")
