"""Stages train exactly their groups at their learning rates; checkpoints are atomic, resumable, partial when
the LLM is frozen, exportable and traceable; a NaN loss stops the run; the CLI reads YAML plus overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from transformers import TrainerCallback

from wings import WingsForConditionalGeneration
from wings.cli import main as wings_main
from wings.commands import wings_command
from wings.training.arguments import build_config, load_config
from wings.training.run import run_stage
from wings.training.stages import STAGES
from wings.training.trainer import TrainingDivergedError

from .conftest import tiny_config

GROUPS_TRAINED = {
    "align": {"projector", "visual_learners", "vision_tower"},  # the from-scratch tower trains in stage 1
    "instruct": {"projector", "visual_learners", "textual_learners", "routers", "llm"},
    "instruct-visual": {"projector", "visual_learners", "llm"},
    "llava-align": {"projector", "vision_tower"},
    "llava-instruct": {"projector", "llm"},
}


class Snapshot(TrainerCallback):
    """Keeps the weights at the start of training, the optimizer's groups, and every logged loss."""

    def __init__(self):
        self.before, self.optimizer_groups, self.losses = {}, [], []

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None and not self.optimizer_groups:
            self.optimizer_groups = [(g["name"], g["lr"], g["initial_lr"]) for g in optimizer.param_groups]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_trains_exactly_its_groups_at_its_learning_rates(tiny_llm_dir, tiny_data, tmp_path, stage):
    snapshot = Snapshot()
    config = build_config(tiny_config(tiny_llm_dir, tiny_data, tmp_path / stage, stage, max_steps=3))
    output = run_stage(config, callbacks=[snapshot])
    model = WingsForConditionalGeneration.from_pretrained(output)
    changed = set()
    for group, named in model.parameter_groups().items():
        for name, parameter in named:
            if not torch.equal(parameter, snapshot.before[name]):
                changed.add(group)
    assert changed == GROUPS_TRAINED[stage]
    expected = STAGES[stage].learning_rates
    for name, _, initial_lr in snapshot.optimizer_groups:
        group = name.removesuffix(".no_decay")
        assert initial_lr == expected.get(group, expected.get("projector")), name


def test_loraplus_ratio_multiplies_only_the_learners_up_projections(tiny_llm_dir, tiny_data, tmp_path):
    snapshot = Snapshot()
    raw = tiny_config(tiny_llm_dir, tiny_data, tmp_path / "align", max_steps=1)
    raw["optim"] = {"loraplus_lr_ratio": 10.0}
    run_stage(build_config(raw), callbacks=[snapshot])
    rates = {name: initial_lr for name, _, initial_lr in snapshot.optimizer_groups}
    expected = STAGES["align"].learning_rates
    assert rates["visual_learners.up"] == pytest.approx(10 * expected["visual_learners"])
    assert rates["visual_learners"] == expected["visual_learners"]
    assert rates["projector"] == expected["projector"]  # other groups keep one rate
    assert not [name for name in rates if name.endswith(".up") and not name.startswith("visual_learners")]


def test_data_image_normalization_is_computed_from_the_training_images_and_saved(tiny_llm_dir, tiny_data, tmp_path):
    from wings.data.images import pixel_statistics
    from wings.model.processing_wings import WingsProcessor

    raw = tiny_config(tiny_llm_dir, tiny_data, tmp_path / "align", max_steps=1)
    raw["model"]["image_normalization"] = "data"
    output = run_stage(build_config(raw))
    images = sorted((tiny_data / "images").glob("*.png"))
    mean, std = pixel_statistics(images, 32)
    saved = WingsProcessor.from_pretrained(output).image_processor
    assert saved.image_mean == pytest.approx(mean) and saved.image_std == pytest.approx(std)
    # half the images solid red, half solid blue; a channel that never varies gets a floor, not a zero
    assert mean == pytest.approx([0.5, 0.0, 0.5]) and std == pytest.approx([0.5, 1e-3, 0.5])
    raw["model"] |= {"vision": str(tmp_path / "pretrained-tower")}
    with pytest.raises(ValueError, match="image_normalization=data is for a new from-scratch tower"):
        build_config(raw)


def test_system_prompt_is_set_by_the_first_stage_and_kept_by_the_next(tiny_llm_dir, tiny_data, tmp_path):
    from wings.model.processing_wings import WingsProcessor

    raw = tiny_config(tiny_llm_dir, tiny_data, tmp_path / "align", max_steps=1)
    raw["model"]["system_prompt"] = ""
    align = run_stage(build_config(raw))
    assert WingsProcessor.from_pretrained(align).system_prompt == ""
    instruct = tiny_config(tiny_llm_dir, tiny_data, tmp_path / "instruct", stage="instruct", max_steps=1)
    instruct["model"] = {"init_from": str(align)}
    assert WingsProcessor.from_pretrained(run_stage(build_config(instruct))).system_prompt == ""
    instruct["model"]["system_prompt"] = "Be brief."
    with pytest.raises(ValueError, match="system_prompt is for a new model"):
        build_config(instruct)


def test_align_checkpoint_leaves_out_the_frozen_llm_and_export_restores_it(tiny_llm_dir, tiny_data, tmp_path):
    config = build_config(tiny_config(tiny_llm_dir, tiny_data, tmp_path / "align"))
    output = run_stage(config)
    with safe_open(output / "model.safetensors", "pt") as weights:
        assert not [key for key in weights.keys() if key.startswith("language_model.")]
    assert json.loads((output / "config.json").read_text())["llm_checkpoint"] == str(tiny_llm_dir)

    loaded = WingsForConditionalGeneration.from_pretrained(output).eval()
    base = WingsForConditionalGeneration.from_llm_and_vision(str(tiny_llm_dir), None).language_model
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.language_model.state_dict().values(), base.state_dict().values())
    )
    assert wings_main(["export", "--checkpoint", str(output), "--out", str(tmp_path / "standalone")]) == 0
    standalone = WingsForConditionalGeneration.from_pretrained(tmp_path / "standalone").eval()
    assert standalone.config.llm_checkpoint is None
    ids = torch.tensor([[5, 6, 7] + [loaded.config.image_token_id] * loaded.config.image_seq_length + [8, 9]])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(
            loaded(input_ids=ids, pixel_values=pixels).logits, standalone(input_ids=ids, pixel_values=pixels).logits
        )


def test_stage_chain_and_provenance(tiny_llm_dir, tiny_data, tmp_path):
    align = run_stage(build_config(tiny_config(tiny_llm_dir, tiny_data, tmp_path / "align")))
    raw = tiny_config(tiny_llm_dir, tiny_data, tmp_path / "instruct", "instruct")
    raw["model"]["init_from"] = str(align)
    instruct = run_stage(build_config(raw), command="wings train ...")
    record = json.loads((instruct / "provenance.json").read_text())
    assert record["status"] == "complete" and record["stage"] == "instruct"
    assert [link["stage"] for link in record["stage_chain"]] == ["align", "instruct"]
    assert record["previous"]["stage"] == "align"
    assert record["models"]["llm"]["name"] == str(tiny_llm_dir)
    assert set(record["models"]["llm"]["files"]) >= {"config.json", "model.safetensors"}
    data = record["data"][0]
    assert data["records"] == 8 and data["used"] == 8 and len(data["sha256"]) == 64
    assert record["config"]["stage"] == "instruct" and record["code"]["transformers"]
    assert "train_loss" in record["metrics"]
    # the instruct stage trains the LLM: its checkpoint is standalone
    assert json.loads((instruct / "config.json").read_text())["llm_checkpoint"] is None
    # a second run reuses what is done
    assert run_stage(build_config(raw)) == instruct


def test_a_seeded_stage_repeats_whatever_the_process_drew_before(tiny_llm_dir, tiny_data, tmp_path):
    """The learners' and projector's initial weights come from the configured seed, not from the state the
    global random generator happens to be in (a pretrained tower draws nothing): two runs of one config are equal."""
    from wings.model.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteVisionModel

    tower = tmp_path / "tower"
    EfficientNetLiteVisionModel(EfficientNetLiteConfig(image_size=32)).save_pretrained(tower)
    weights = []
    for earlier_draws in (1, 5):
        torch.manual_seed(123)
        torch.rand(earlier_draws)  # whatever ran before in the process (data preparation, an earlier stage)
        raw = tiny_config(tiny_llm_dir, tiny_data, tmp_path / f"run-{earlier_draws}", max_steps=2)
        raw["model"]["vision"] = str(tower)
        output = run_stage(build_config(raw))
        with safe_open(output / "model.safetensors", "pt") as saved:
            weights.append({name: saved.get_tensor(name) for name in saved.keys()})
    assert weights[0].keys() == weights[1].keys() and any("learner" in name for name in weights[0])
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


class ParameterDtypes(TrainerCallback):
    """The dtype of every trainable and frozen parameter group while training."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.dtypes = {group: {p.dtype for _, p in named} for group, named in model.parameter_groups().items() if named}


def test_bf16_holds_a_frozen_llm_in_bf16_and_saves_a_float32_model(tiny_llm_dir, tiny_data, tmp_path):
    """With mixed precision the frozen LLM of stage 1 is kept in bf16 (it is only read); what trains stays float32
    and the saved model, and the stage after it, are float32."""
    dtypes = ParameterDtypes()
    raw = tiny_config(tiny_llm_dir, tiny_data, tmp_path / "align", max_steps=2, bf16=True)
    align = run_stage(build_config(raw), callbacks=[dtypes])
    assert dtypes.dtypes["llm"] == {torch.bfloat16}
    assert dtypes.dtypes["visual_learners"] == dtypes.dtypes["projector"] == {torch.float32}
    model = WingsForConditionalGeneration.from_pretrained(align)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    stage_two = ParameterDtypes()
    raw = tiny_config(tiny_llm_dir, tiny_data, tmp_path / "instruct", "instruct", max_steps=1, bf16=True)
    raw["model"]["init_from"] = str(align)
    run_stage(build_config(raw), callbacks=[stage_two])
    assert stage_two.dtypes["llm"] == {torch.float32}  # trained: float32 weights, bf16 only inside autocast


class KillAt(TrainerCallback):
    """Stands in for a kill: the process dies right after the step-`step` checkpoint."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("killed")


def test_resume_after_a_kill_continues_the_same_loss_curve(tiny_llm_dir, tiny_data, tmp_path):
    settings = dict(max_steps=4, save_steps=2, per_device_train_batch_size=1)
    uninterrupted = Snapshot()
    run_stage(build_config(tiny_config(tiny_llm_dir, tiny_data, tmp_path / "a", **settings)), callbacks=[uninterrupted])

    raw = tiny_config(tiny_llm_dir, tiny_data, tmp_path / "b", **settings)
    with pytest.raises(KeyboardInterrupt):
        run_stage(build_config(raw), callbacks=[KillAt(2)])
    assert (tmp_path / "b" / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (tmp_path / "b" / ".staging").exists()
    resumed = Snapshot()
    run_stage(build_config(raw), callbacks=[resumed])
    assert len(uninterrupted.losses) == 4 and len(resumed.losses) == 2
    assert resumed.losses == pytest.approx(uninterrupted.losses[2:], rel=1e-5)


class PoisonAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                model.projector.linear_2.bias.fill_(float("nan"))


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_llm_dir, tiny_data, tmp_path):
    raw = tiny_config(tiny_llm_dir, tiny_data, tmp_path / "run", max_steps=6, save_steps=2)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at step 3.*checkpoint-2"):
        run_stage(build_config(raw), callbacks=[PoisonAt(2)])
    good = WingsForConditionalGeneration.from_pretrained(tmp_path / "run" / "checkpoint-2")
    assert all(torch.isfinite(p).all() for p in good.parameters())
    assert not (tmp_path / "run" / "config.json").exists()  # no final model from a diverged run


def test_yaml_config_with_command_line_overrides(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "stage": "align",
                "model": {"llm": "x"},
                "data": {"datasets": [{"path": "a.json"}]},
                "training": {"output_dir": "out", "max_steps": 5},
            }
        )
    )
    config = load_config(
        str(path),
        [
            "--stage",
            "instruct",
            "--training.max_steps",
            "9",
            "--model.wings_layers",
            "[0, 2]",
            "--optim.learning_rates.llm=1e-5",
            "--data.max_length=64",
        ],
    )
    assert config.stage == "instruct" and config.training["max_steps"] == 9
    assert config.optim.learning_rates == {"llm": 1e-5}
    assert config.model.wings_layers == [0, 2] and config.data.max_length == 64
    assert config.training["lr_scheduler_type"] == "cosine"  # the recipe's defaults fill the rest
    with pytest.raises(ValueError, match=r"unknown keys \['lrank'\] in section 'model'"):
        load_config(str(path), ["--model.lrank", "4"])
    with pytest.raises(ValueError, match="stage 'pretrain' is not one of"):
        load_config(str(path), ["--stage", "pretrain"])
    with pytest.raises(ValueError, match="unknown groups"):
        load_config(str(path), ["--optim.learning_rates", "{mlp: 1.0}"])
    assert load_config(str(path), ["--model.router_init_visual_weight", "0.9"]).model.router_init_visual_weight == 0.9
    with pytest.raises(ValueError, match=r"model.router_init_visual_weight must be in \(0, 1\)"):
        load_config(str(path), ["--model.router_init_visual_weight", "1.5"])
    assert load_config(str(path), ["--optim.loraplus_lr_ratio", "16"]).optim.loraplus_lr_ratio == 16
    with pytest.raises(ValueError, match="optim.loraplus_lr_ratio must be > 0, got 0"):
        load_config(str(path), ["--optim.loraplus_lr_ratio", "0"])
    with pytest.raises(ValueError, match="model.image_normalization must be tower or data"):
        load_config(str(path), ["--model.image_normalization", "imagenet"])


def test_train_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        wings_main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--model.lorra_rank", "--data.skip_invalid_samples", "--optim.learning_rates", "instruct:"):
        assert option in text


def test_train_command_end_to_end(tiny_llm_dir, tiny_data, tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tiny_llm_dir, tiny_data, tmp_path / "out")))
    assert wings_main(["train", "--config", str(path), "--training.max_steps", "1"]) == 0
    assert f"next stage: {wings_command()} train" in capsys.readouterr().out  # runs as printed, venv or not
    assert json.loads((tmp_path / "out" / "provenance.json").read_text())["global_step"] == 1
    missing = wings_main(["train", "--config", str(tmp_path / "nope.yaml")])
    assert missing == 1 and "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_ready_configs_are_valid(path):
    config = load_config(str(path), [])
    assert config.stage in STAGES and config.training["output_dir"]
    deepspeed = config.training.get("deepspeed")
    if deepspeed:
        assert (Path(__file__).resolve().parents[2] / deepspeed).is_file()
