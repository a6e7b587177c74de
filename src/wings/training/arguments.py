"""`wings train` configuration: a YAML file of sections, every key overridable as `--section.key value`.

stage: align                       # align | instruct | llava-align | llava-instruct
model:    {llm: ..., vision: ..., init_from: ..., lorra_rank: 16, ...}       ModelArguments
data:     {datasets: [{path: ..., image_folder: ..., ratio: 1.0}], ...}      DataArguments
optim:    {learning_rates: {projector: 1e-3}, weight_decay: {...}}          OptimArguments
training: {output_dir: runs/x, max_steps: 100, ...}   any transformers TrainingArguments field
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shlex
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainingArguments

from wings.model.attention import SUPPORTED_BACKENDS
from wings.model.modeling_wings import PARAMETER_GROUPS
from wings.model.vision_towers import VISION_PRESETS

from .stages import STAGES


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with its help text (printed by `wings train --help`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class ModelArguments:
    """What to train: a new WINGS model around an LLM and a vision tower, or a previous stage's output."""

    llm: str | None = option(None, "LLM to build on: registry name (smollm2-135m-instruct), hub id or directory")
    vision: str | None = option(
        "siglip-scratch-64",
        "vision tower: SigLIP/CLIP hub id or directory, or a preset: efficientnet-lite0-in1k "
        "(pretrained, frozen), siglip-scratch-32 / -64 (trained in the first stage)",
    )
    init_from: str | None = option(None, "start from this earlier stage's output directory instead of llm/vision")
    lorra_rank: int = option(16, "rank of the learners' low-rank projections (the paper's 7B models use 64)")
    wings_layers: list[int] | None = option(None, "decoder layers that get learners (default: all)")
    train_vision_tower: bool | None = option(
        None, "train the vision tower too (default: yes in the first stage when it is a from-scratch preset)"
    )
    attn_implementation: str = option(
        "sdpa", "attention kernel of the LLM: sdpa, eager, flash_attention_2, flash_attention_3 (docs/gpu.md)"
    )
    router_init_visual_weight: float | None = option(
        None, "w_v of routers created by this stage, where a token sees an image (default: the model config's)"
    )
    vision_feature_layer: int | None = option(
        None, "the tower's hidden state the projector reads (default: the tower's own, e.g. a CNN's head, -1)"
    )
    image_preprocess: str = option("pad", "pad (to square with the mean colour) or resize")
    system_prompt: str | None = option(
        None,
        "system message of conversations without one, saved with a new model's processor (none: the chat "
        "template's default; an empty string: an empty system turn)",
    )
    image_normalization: str = option(
        "tower",
        "pixel mean/std: tower (the tower's own; SigLIP 0.5/0.5) or data (per channel, from up to 1,000 "
        "training images: for a tower trained from scratch)",
    )


@dataclass
class DataArguments:
    """Training data: one or several files, mixed by ratio (see `wings data check`)."""

    datasets: list[dict] = option([], "list of {path, image_folder, ratio}; ratio 0.5 takes half a file, 2 twice")
    max_length: int = option(2048, "maximum tokens per sample (truncation never cuts inside an image)")
    skip_invalid_samples: bool = option(False, "skip (and count) invalid samples instead of stopping at the first")
    group_by_length: bool = option(True, "batches of one modality and similar lengths (less padding)")
    padding_side: str = option("right", "padding side of training batches")


@dataclass
class OptimArguments:
    """Per-group learning rates and weight decay (groups: projector, visual_learners, textual_learners,
    routers, llm, vision_tower); the stage's defaults (WingsMD's table) fill what is not given."""

    learning_rates: dict[str, float] = option({}, "learning rate per parameter group, over the stage's defaults")
    weight_decay: dict[str, float] = option({}, "weight decay per group (default: training.weight_decay)")
    loraplus_lr_ratio: float = option(
        1.0, "the learners' B (up) projections train at this multiple of their group's rate (LoRA+); 1: one rate"
    )


# Defaults of the `training` section (transformers TrainingArguments), chosen for this recipe.
TRAINING_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "num_train_epochs": 1,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,  # a fraction of the run (the authors' 3% warmup)
    "max_grad_norm": 1.0,
    "weight_decay": 0.0,
    "logging_steps": 10,
    "save_strategy": "steps",
    "save_steps": 500,
    "save_total_limit": 2,
    "dataloader_num_workers": 0,
    "remove_unused_columns": False,  # the collator's keys are the model's inputs
    "seed": 42,
    "report_to": "auto",  # tensorboard when installed; add "wandb" explicitly
}


@dataclass
class TrainConfig:
    """The whole `wings train` configuration."""

    stage: str = option("align", f"training stage: {', '.join(STAGES)}")
    model: ModelArguments = field(default_factory=ModelArguments)
    data: DataArguments = field(default_factory=DataArguments)
    optim: OptimArguments = field(default_factory=OptimArguments)
    training: dict[str, Any] = field(default_factory=dict)  # transformers TrainingArguments fields

    def validate(self) -> None:
        check_values(self)  # types and ranges first: the checks below compare values
        if self.stage not in STAGES:
            raise ValueError(f"stage {self.stage!r} is not one of {', '.join(STAGES)}")
        if not self.model.init_from and not self.model.llm:
            raise ValueError("give model.llm (to build a new model) or model.init_from (a previous stage's output)")
        if not self.data.datasets:
            raise ValueError("give data.datasets: a list of {path, image_folder, ratio}")
        for number, source in enumerate(self.data.datasets):
            if not isinstance(source, dict) or "path" not in source:
                raise ValueError(f"data.datasets[{number}] must be a mapping with a 'path' (got {source!r})")
        if not self.training.get("output_dir"):
            raise ValueError("give training.output_dir (where checkpoints and the final model go)")
        for section in ("learning_rates", "weight_decay"):
            unknown = set(getattr(self.optim, section)) - set(PARAMETER_GROUPS)
            if unknown:
                raise ValueError(f"optim.{section} has unknown groups {sorted(unknown)}; groups: {PARAMETER_GROUPS}")
        if self.data.padding_side not in ("left", "right"):
            raise ValueError(f"data.padding_side must be left or right, got {self.data.padding_side!r}")
        weight = self.model.router_init_visual_weight
        if weight is not None and not 0.0 < weight < 1.0:
            raise ValueError(f"model.router_init_visual_weight must be in (0, 1) (a softmax weight), got {weight}")
        if not self.optim.loraplus_lr_ratio > 0:
            raise ValueError(f"optim.loraplus_lr_ratio must be positive, got {self.optim.loraplus_lr_ratio}")
        if self.model.attn_implementation not in SUPPORTED_BACKENDS:
            raise ValueError(
                f"model.attn_implementation must be one of {', '.join(SUPPORTED_BACKENDS)}, "
                f"got {self.model.attn_implementation!r}"
            )
        if self.model.image_normalization not in ("tower", "data"):
            raise ValueError(f"model.image_normalization must be tower or data, got {self.model.image_normalization!r}")
        from_scratch = not self.model.init_from and self.model.vision in VISION_PRESETS
        if self.model.image_normalization == "data" and not from_scratch:
            raise ValueError(
                "model.image_normalization=data is for a new from-scratch tower (a preset): a pretrained tower "
                "keeps the statistics it was trained with, and a model from init_from keeps its processor's"
            )
        if self.model.system_prompt is not None and self.model.init_from:
            raise ValueError(
                "model.system_prompt is for a new model: a model from init_from keeps its processor's "
                "(set it in the first stage)"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelArguments, "data": DataArguments, "optim": OptimArguments}

# Ranges of numeric options, as (lowest, whether the lowest is allowed): checked before anything loads.
RANGES: dict[str, tuple[float, bool]] = {
    "model.lorra_rank": (1, True),
    "data.max_length": (1, True),
    "optim.loraplus_lr_ratio": (0, False),
    "training.learning_rate": (0, False),
    "training.per_device_train_batch_size": (1, True),
    "training.gradient_accumulation_steps": (1, True),
    "training.num_train_epochs": (0, False),
    "training.save_steps": (0, False),
    "training.logging_steps": (0, False),
    "training.eval_steps": (0, False),
    "training.warmup_steps": (0, True),
    "training.weight_decay": (0, True),
    "training.max_grad_norm": (0, True),
    "training.dataloader_num_workers": (0, True),
    "training.save_total_limit": (1, True),
    "training.seed": (0, True),
}


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why `value` does not fit the type `hint` (None when it does, or when the hint is not a simple one)."""
    options = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    if value is None:
        return None if type(None) in options else "must be given (not null)"
    simple = [option for option in options if option in (bool, int, float, str)]
    containers = [typing.get_origin(option) for option in options if typing.get_origin(option) in (list, dict)]
    if len(simple) + len(containers) < len([o for o in options if o is not type(None)]):
        return None  # an enum or a class: transformers checks it
    if bool in simple and isinstance(value, bool):
        return None
    if int in simple and isinstance(value, int) and not isinstance(value, bool):
        return None
    if float in simple and isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if math.isfinite(value) else "must be a finite number"
    if str in simple and isinstance(value, str):
        return None
    if list in containers and isinstance(value, list):
        element = next(typing.get_args(o) for o in options if typing.get_origin(o) is list)
        bad = [item for item in value if element and _type_problem(item, element[0])]
        return f"has items of the wrong type ({bad[0]!r})" if bad else None
    if dict in containers and isinstance(value, dict):
        key_type, value_type = next(typing.get_args(o) for o in options if typing.get_origin(o) is dict) or (Any, Any)
        bad = [item for item in value.values() if value_type is not Any and _type_problem(item, value_type)]
        return f"has values of the wrong type ({bad[0]!r})" if bad else None
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "text",
        list: "a list",
        dict: "a mapping",
    }
    wanted = " or ".join(sorted({names.get(typing.get_origin(o) or o, str(o)) for o in options if o is not type(None)}))
    return f"must be {wanted}, got {type(value).__name__} {value!r}"


def check_values(config: TrainConfig) -> None:
    """Every option's type and range, with the option's name in the message (before any model or data loads)."""
    for name, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            problem = _type_problem(getattr(getattr(config, name), item.name), hints[item.name])
            if problem:
                raise ValueError(f"{name}.{item.name} {problem}")
    known = {item.name for item in dataclasses.fields(TrainingArguments)}
    unknown = sorted(set(config.training) - known)
    if unknown:
        raise ValueError(
            f"training: unknown keys {unknown}; the training section takes transformers "
            "TrainingArguments fields (learning_rate, max_steps, per_device_train_batch_size, ...)"
        )
    hints = typing.get_type_hints(TrainingArguments)
    for key, value in config.training.items():
        problem = _type_problem(value, hints.get(key, Any))
        if problem:
            raise ValueError(f"training.{key} {problem}")
    values = {f"training.{key}": value for key, value in config.training.items()}
    values.update(
        {
            "model.lorra_rank": config.model.lorra_rank,
            "data.max_length": config.data.max_length,
            "optim.loraplus_lr_ratio": config.optim.loraplus_lr_ratio,
        }
    )
    for section in ("learning_rates", "weight_decay"):
        for group, value in getattr(config.optim, section).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"optim.{section}.{group} must be a number >= 0, got {value!r}")
    for name, value in values.items():
        if name in RANGES and value is not None:
            lowest, inclusive = RANGES[name]
            if value < lowest or (value == lowest and not inclusive):
                raise ValueError(f"{name} must be {'>=' if inclusive else '>'} {lowest}, got {value!r}")
    max_steps = config.training.get("max_steps", -1)
    if max_steps is not None and max_steps != -1 and max_steps < 1:
        raise ValueError(f"training.max_steps must be >= 1 (or -1: train for num_train_epochs), got {max_steps!r}")
    seed = config.training.get("seed")
    if isinstance(seed, int) and seed >= 2**32:  # numpy's generator, seeded by transformers, takes 32 bits
        raise ValueError(f"training.seed must be < 2**32, got {seed}")
    for number, layer in enumerate(config.model.wings_layers or []):
        if layer < 0:
            raise ValueError(f"model.wings_layers[{number}] must be a layer index >= 0, got {layer}")
    for number, source in enumerate(config.data.datasets):
        if not isinstance(source, dict):
            continue  # `validate` names it
        ratio = source.get("ratio", 1.0)
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio < 0:
            raise ValueError(f"data.datasets[{number}].ratio must be a number >= 0, got {ratio!r}")
        for key in ("path", "image_folder"):
            if source.get(key) is not None and not isinstance(source[key], str):
                raise ValueError(f"data.datasets[{number}].{key} must be a path (text), got {source[key]!r}")


def with_numbers(value: Any) -> Any:
    """YAML 1.1 reads `1e-5` as a string; learning rates are written that way, so read them as numbers."""
    if isinstance(value, str):
        try:
            return (
                float(value)
                if any(c in value for c in "eE.") and value.strip().lower() not in ("nan", "inf")
                else value
            )
        except ValueError:
            return value
    if isinstance(value, dict):
        return {key: with_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [with_numbers(item) for item in value]
    return value


def parse_value(text: str) -> Any:
    """A command-line value as YAML would read it (numbers, booleans, lists, null)."""
    try:
        return with_numbers(yaml.safe_load(text))
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `--section.key value` / `--key=value` pairs from the command line to the YAML mapping."""
    raw = copy.deepcopy(raw)
    position = 0
    while position < len(overrides):
        token = overrides[position]
        if not token.startswith("--"):
            raise ValueError(f"unexpected argument {token!r}: overrides look like --section.key value")
        key, has_value, value = token[2:].partition("=")
        if not has_value:
            if position + 1 >= len(overrides) or overrides[position + 1].startswith("--"):
                raise ValueError(f"--{key} needs a value")
            position += 1
            value = overrides[position]
        *parents, name = key.split(".")
        target = raw
        for parent in parents:  # --optim.learning_rates.llm 1e-5 sets a key inside a mapping
            target[parent] = dict(target.get(parent) or {})
            if not isinstance(target[parent], dict):
                raise ValueError(f"--{key}: {parent!r} is not a section")
            target = target[parent]
        target[name] = parse_value(value)
        position += 1
    return raw


def check_keys(raw: dict[str, Any], source: str) -> None:
    """Unknown sections and keys are errors naming `source`, the section and the valid keys."""
    unknown = set(raw) - {"stage", "training", *SECTIONS}
    if unknown:
        raise ValueError(f"{source}: unknown top-level keys {sorted(unknown)}; use stage, model, data, optim, training")
    for name, cls in SECTIONS.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{source}: section {name!r} must be a mapping")
        valid = {f.name for f in dataclasses.fields(cls)}
        bad = set(values) - valid
        if bad:
            raise ValueError(f"{source}: unknown keys {sorted(bad)} in section {name!r}; valid: {sorted(valid)}")


def build_config(raw: dict[str, Any], source: str = "the configuration") -> TrainConfig:
    """Typed configuration from a mapping; unknown keys are errors naming the section and the valid keys."""
    check_keys(raw, source)
    sections = {name: cls(**(raw.get(name) or {})) for name, cls in SECTIONS.items()}
    training = {**TRAINING_DEFAULTS, **(raw.get("training") or {})}
    config = TrainConfig(stage=raw.get("stage", "align"), training=training, **sections)
    config.validate()
    return config


def load_config(path: str | None, overrides: list[str]) -> TrainConfig:
    """Read the YAML file (if any), apply command-line overrides, and type-check the result."""
    raw: dict[str, Any] = {}
    if path:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            raw = with_numbers(yaml.safe_load(file.read_text()) or {})
        except yaml.YAMLError as error:
            raise ValueError(f"{path} is not valid YAML: {error}") from error
        if not isinstance(raw, dict):
            raise ValueError(f"{path} must hold a mapping of sections (stage, model, data, optim, training)")
    if path:
        check_keys(raw, path)
    check_keys(apply_overrides({}, overrides), "the command line")  # a mistyped override is not the file's fault
    raw = apply_overrides(raw, overrides)
    return build_config(raw, source=path or "the command line")


def describe_options() -> str:
    """The text of `wings train --help`: every option with its default and meaning."""
    lines = ["Options (in the YAML file, or on the command line as --section.key value):", ""]
    lines.append(f"  --stage {{{','.join(STAGES)}}}")
    for stage in STAGES.values():
        lines.append(f"      {stage.name}: {stage.description}; default learning rates {stage.learning_rates}.")
    for name, cls in SECTIONS.items():
        lines += ["", f"  {name}: {cls.__doc__.splitlines()[0]}"]
        for item in dataclasses.fields(cls):
            default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
            lines.append(f"    --{name}.{item.name} (default: {default!r})")
            text = item.metadata.get("help", "")
            lines.append(f"        {text if text.endswith('.') else text + '.'}")  # whole sentences in --help
    lines += [
        "",
        "  training: any transformers TrainingArguments field, e.g. --training.output_dir runs/x",
        "    --training.max_steps 100 --training.per_device_train_batch_size 8 --training.bf16 true;",
        "    defaults here: " + ", ".join(f"{k}={v!r}" for k, v in TRAINING_DEFAULTS.items()) + ".",
    ]
    return "\n".join(lines)


def command_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in argv)
