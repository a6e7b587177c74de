"""A damaged newest checkpoint falls back to the previous complete one; every option is checked up front; bad
data files name file and line and can be skipped; provenance says exactly which records were left out."""

from __future__ import annotations

import copy
import json
import logging

import pytest
from PIL import Image

from wings.cli import main as wings_main
from wings.training.arguments import build_config
from wings.training.run import checkpoint_problem, choose_checkpoint, run_stage

from .conftest import tiny_config
from .test_training import KillAt, Snapshot


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_complete_one(tiny_llm_dir, tiny_data, tmp_path, capsys):
    settings = dict(max_steps=6, save_steps=2, per_device_train_batch_size=1)
    uninterrupted = Snapshot()
    run_stage(build_config(tiny_config(tiny_llm_dir, tiny_data, tmp_path / "a", **settings)), callbacks=[uninterrupted])
    raw = tiny_config(tiny_llm_dir, tiny_data, tmp_path / "b", **settings)
    with pytest.raises(KeyboardInterrupt):
        run_stage(build_config(raw), callbacks=[KillAt(4)])
    newest = tmp_path / "b" / "checkpoint-4"
    assert checkpoint_problem(newest) is None and checkpoint_problem(tmp_path / "b" / "checkpoint-2") is None
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # cut short, as by a full disk
    assert checkpoint_problem(newest).startswith("model.safetensors is damaged (")
    capsys.readouterr()
    resumed = Snapshot()
    run_stage(build_config(raw), callbacks=[resumed])
    out = capsys.readouterr().out
    assert f"checkpoint {newest} is damaged: model.safetensors is damaged" in out
    assert f"resuming from {tmp_path / 'b' / 'checkpoint-2'}" in out
    assert resumed.losses == pytest.approx(uninterrupted.losses[2:], rel=1e-5)


def test_damaged_torch_files_and_state_are_named(tmp_path):
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    assert checkpoint_problem(folder) == "trainer_state.json is missing"
    (folder / "trainer_state.json").write_text("{")
    assert checkpoint_problem(folder).startswith("trainer_state.json is damaged")
    (folder / "trainer_state.json").write_text("{}")
    assert checkpoint_problem(folder) == "no model weights (model.safetensors) in it"
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(4)}, folder / "model.safetensors")
    torch.save({"state": {}}, folder / "optimizer.pt")
    assert checkpoint_problem(folder) is None
    (folder / "optimizer.pt").write_bytes((folder / "optimizer.pt").read_bytes()[:50])
    assert checkpoint_problem(folder).startswith("optimizer.pt is damaged (")
    with pytest.raises(
        ValueError,
        match=r"no complete checkpoint to resume from .*checkpoint-3: optimizer.pt is "
        r"damaged.*--resume-from",
    ):
        choose_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=r"--resume-from\) .*checkpoint-3: optimizer.pt is damaged"):
        choose_checkpoint(tmp_path, str(folder))


def test_resume_from_names_the_checkpoint(tiny_llm_dir, tiny_data, tmp_path, capsys):
    raw = tiny_config(
        tiny_llm_dir, tiny_data, tmp_path / "run", max_steps=4, save_steps=1, per_device_train_batch_size=1
    )
    with pytest.raises(KeyboardInterrupt):
        run_stage(build_config(raw), callbacks=[KillAt(3)])
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(raw))
    capsys.readouterr()
    assert wings_main(["train", "--config", str(path), "--resume-from", str(tmp_path / "run" / "checkpoint-2")]) == 0
    assert f"resuming from {tmp_path / 'run' / 'checkpoint-2'}" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "provenance.json").read_text())["global_step"] == 4


BASE = {
    "stage": "align",
    "model": {"llm": "x"},
    "data": {"datasets": [{"path": "a.json"}]},
    "training": {"output_dir": "out", "max_steps": 5},
}


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("training", "learning_rate", -1, "training.learning_rate must be > 0, got -1"),
        ("training", "gradient_accumulation_steps", 0, "training.gradient_accumulation_steps must be >= 1, got 0"),
        ("training", "max_steps", 0, r"training.max_steps must be >= 1 \(or -1: train for num_train_epochs\), got 0"),
        (
            "training",
            "per_device_train_batch_size",
            2.5,
            "training.per_device_train_batch_size must be an integer, got float 2.5",
        ),
        ("training", "bf16", "yes", "training.bf16 must be true or false, got str 'yes'"),
        ("training", "lerning_rate", 0.1, r"training: unknown keys \['lerning_rate'\]"),
        ("training", "seed", 2**40, r"training.seed must be < 2\*\*32"),
        ("model", "lorra_rank", "eight", "model.lorra_rank must be an integer, got str 'eight'"),
        ("model", "lorra_rank", 0, "model.lorra_rank must be >= 1, got 0"),
        ("model", "wings_layers", [0, -2], r"model.wings_layers\[1\] must be a layer index >= 0, got -2"),
        ("data", "max_length", 0, "data.max_length must be >= 1, got 0"),
        ("data", "skip_invalid_samples", "sometimes", "data.skip_invalid_samples must be true or false"),
        ("optim", "learning_rates", {"projector": -1e-3}, "optim.learning_rates.projector must be a number >= 0"),
        ("optim", "loraplus_lr_ratio", "big", "optim.loraplus_lr_ratio must be a number, got str 'big'"),
    ],
)
def test_every_option_is_checked_for_type_and_range_naming_it(section, key, value, message):
    raw = copy.deepcopy(BASE)
    raw.setdefault(section, {})[key] = value
    with pytest.raises(ValueError, match=f"^{message}"):
        build_config(raw)


def test_dataset_ratios_and_paths_are_checked():
    raw = copy.deepcopy(BASE)
    raw["data"]["datasets"] = [{"path": "a.json", "ratio": -1}]
    with pytest.raises(ValueError, match=r"data.datasets\[0\].ratio must be a number >= 0, got -1"):
        build_config(raw)
    raw["data"]["datasets"] = [{"path": 7}]
    with pytest.raises(ValueError, match=r"data.datasets\[0\].path must be a path \(text\), got 7"):
        build_config(raw)
    assert build_config(copy.deepcopy(BASE)).training["max_steps"] == 5


def test_provenance_records_every_record_skipped_or_dropped_while_training(tiny_llm_dir, tmp_path):
    Image.new("RGB", (12, 12), "red").save(tmp_path / "red.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    good = {
        "image": "red.png",
        "conversations": [{"from": "human", "value": "<image>\nwhat color?"}, {"from": "gpt", "value": "red"}],
    }
    broken = {**good, "image": "broken.png"}
    empty = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": ""}]}
    lines = [json.dumps(record).encode() for record in (good, broken, good, empty, good)]
    lines.append(
        json.dumps({"conversations": [{"from": "human", "value": "caf\u00e9?"}, {"from": "gpt", "value": "yes"}]})
        .encode()
        .replace(b"\\u00e9", b"\xe9")
    )
    (tmp_path / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    raw = tiny_config(tiny_llm_dir, tmp_path, tmp_path / "out", max_steps=3, per_device_train_batch_size=1)
    raw["data"]["datasets"] = [{"path": str(tmp_path / "train.jsonl")}]
    with pytest.raises(ValueError, match=r"record 3: conversations\[1\]: empty assistant turn"):
        run_stage(build_config(raw))
    raw["data"]["skip_invalid_samples"] = True
    output = run_stage(build_config(raw))
    data = json.loads((output / "provenance.json").read_text())["data"][0]
    assert data["records"] == 6 and data["used"] == 3
    assert data["skipped_records"] == {"empty turn": [3], "format": [5], "unreadable image": [1]}
    assert data["skipped"] == {"empty turn": 1, "format": 1, "unreadable image": 1}


def test_a_non_utf8_record_names_file_and_line_while_training(tiny_llm_dir, tiny_data, tmp_path, caplog):
    source = json.loads((tiny_data / "train.json").read_text())
    lines = [json.dumps(record).encode() for record in source]
    lines[2] = lines[2].replace(b"what color is it?", b"what col\xf6r is it?")
    (tmp_path / "latin1.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    raw = tiny_config(tiny_llm_dir, tiny_data, tmp_path / "out")
    raw["data"]["datasets"] = [{"path": str(tmp_path / "latin1.jsonl"), "image_folder": str(tiny_data)}]
    with pytest.raises(ValueError, match=rf"{tmp_path / 'latin1.jsonl'}: record 2: <record>: line 3: not UTF-8 text"):
        run_stage(build_config(raw))
    raw["data"]["skip_invalid_samples"] = True
    with caplog.at_level(logging.WARNING):
        output = run_stage(build_config(raw))
    assert json.loads((output / "provenance.json").read_text())["data"][0]["skipped_records"] == {"format": [2]}
