"""One training stage from a `TrainConfig`: model, data, Trainer, resume, final model with its provenance.

Resuming picks the newest checkpoint whose files are whole (a truncated `model.safetensors` or `optimizer.pt`,
say after a full disk, is named and skipped with a warning, and the previous complete checkpoint is used), or
the one `training.resume_from_checkpoint` (`wings train --resume-from`) names.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from wings.data.dataset import build_dataset, read_data_events
from wings.data.images import pixel_statistics
from wings.model.builder import build_wings
from wings.model.modeling_wings import WingsForConditionalGeneration
from wings.model.processing_wings import WingsCollator, WingsProcessor
from wings.model.registry import resolve_llm
from wings.model.vision_towers import VISION_PRESETS

from .arguments import TrainConfig
from .provenance import add_data_events, data_fingerprint, model_fingerprint, stage_record
from .stages import Stage, get_stage, prepare_model_for_stage
from .trainer import PROVENANCE_FILE, WingsTrainer

logger = logging.getLogger(__name__)
DATA_EVENTS = ".data-events"  # skips and drops met while loading, one JSON-lines file per process


def load_for_stage(config: TrainConfig, stage: Stage) -> tuple[WingsForConditionalGeneration, WingsProcessor, str]:
    """The model in the stage's learner mode, its processor, and where its LLM weights can be read again."""
    options = dict(attn_implementation=config.model.attn_implementation)
    if config.model.router_init_visual_weight is not None:
        options["router_init_visual_weight"] = config.model.router_init_visual_weight
    if config.model.vision_feature_layer is not None and not config.model.init_from:  # a new model's choice
        options["vision_feature_layer"] = config.model.vision_feature_layer
    if config.model.init_from:
        source = config.model.init_from
        if not Path(source, "config.json").is_file():
            raise FileNotFoundError(f"model.init_from={source} holds no model (config.json): train that stage first")
        model = WingsForConditionalGeneration.from_pretrained(source, learners=stage.learners, **options)
        processor = WingsProcessor.from_pretrained(source)
        llm_reference = model.config.llm_checkpoint or source
    else:
        model, processor = build_wings(
            config.model.llm,
            config.model.vision,
            image_preprocess=config.model.image_preprocess,
            system_prompt=config.model.system_prompt,
            learners=stage.learners,
            lorra_rank=config.model.lorra_rank,
            wings_layers=config.model.wings_layers,
            **options,
        )
        llm_reference = config.model.llm
    return model, processor, llm_reference


def freeze_vision_parameters_without_gradient(model: WingsForConditionalGeneration) -> list[str]:
    """Freeze tower parameters that the features never reach (post-norm, pooling head, layers after the feature
    layer): DDP requires every trained parameter to get a gradient."""
    tower = [(n, p) for n, p in model.parameter_groups()["vision_tower"] if p.requires_grad]
    if not tower:
        return []
    size = model.config.vision_config.image_size
    model.get_image_features(torch.zeros(1, 3, size, size, device=model.device)).sum().backward()
    unused = [n for n, p in tower if p.grad is None]
    for name, parameter in tower:
        parameter.grad = None
        if name in set(unused):
            parameter.requires_grad_(False)
    model.zero_grad(set_to_none=True)
    return unused


def training_arguments(config: TrainConfig) -> TrainingArguments:
    values: dict[str, Any] = dict(config.training)
    if values.get("report_to") == "auto":
        values["report_to"] = ["tensorboard"] if importlib.util.find_spec("tensorboard") else "none"
    if "bf16" not in values and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        values["bf16"] = True  # bf16 on GPU; fp32 on CPU
    try:
        args = TrainingArguments(**values)
    except TypeError as error:
        raise ValueError(f"training section: {error} (keys must be transformers TrainingArguments fields)") from error
    _ = args.device  # reading it sets up the process group now
    if args.deepspeed and torch.distributed.is_initialized():
        import deepspeed  # its own communication layer must know the group too (CPU runs use gloo)

        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    return args


def is_complete(output_dir: Path) -> bool:
    provenance = output_dir / PROVENANCE_FILE
    return provenance.is_file() and json.loads(provenance.read_text()).get("status") == "complete"


def save_final(trainer: WingsTrainer, output_dir: Path, metrics: dict[str, Any]) -> None:
    """Write the final model beside the checkpoints; config.json and provenance.json land last, so a reader
    never sees a half-written model as complete."""
    staging = output_dir / ".final-staging"
    if trainer.args.should_save:  # the writing process alone: another rank must never remove it under the writer
        shutil.rmtree(staging, ignore_errors=True)
    trainer.save_model(str(staging))  # every rank calls it (ZeRO-3 gathers the weights); one writes
    if not trainer.args.should_save:
        return
    trainer.provenance["status"] = "complete"
    add_data_events(trainer.provenance["data"], read_data_events(output_dir / DATA_EVENTS))
    for entry in trainer.provenance["data"]:
        if entry["skipped"] or entry["dropped"]:
            print(
                f"data {entry['path']}: trained on {entry['used']} of {entry['records']} records; skipped "
                f"{entry['skipped'] or 'none'}, dropped {entry['dropped'] or 'none'} "
                f"(record indices in {PROVENANCE_FILE})"
            )
    trainer.write_provenance(str(staging), metrics)
    last = ("config.json", PROVENANCE_FILE)
    names = sorted(os.listdir(staging), key=lambda name: name in last)
    for name in names:
        target = output_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    shutil.rmtree(staging, ignore_errors=True)


def run_stage(
    config: TrainConfig, command: str = "", force: bool = False, callbacks: list[TrainerCallback] | None = None
) -> Path:
    """Train one stage; returns the output directory holding the final model. Resumes an interrupted run."""
    stage = get_stage(config.stage)
    output_dir = Path(config.training["output_dir"])
    if is_complete(output_dir) and not force:
        print(f"{output_dir} already holds a finished {stage.name} stage: reusing it (pass --force to retrain)")
        return output_dir
    # The new modules' initial weights come from the run's seed, not from whatever the process drew before (the
    # Trainer seeds only after the model exists). The model is built before the DeepSpeed config is active: ZeRO-3
    # then partitions the assembled model when the engine starts, not sub-models while WINGS wires them together.
    set_seed(config.training["seed"])
    model, processor, llm_reference = load_for_stage(config, stage)
    args = training_arguments(config)
    train_tower = config.model.train_vision_tower
    if train_tower is None:
        train_tower = (
            not config.model.init_from and config.model.vision in VISION_PRESETS and stage.name.endswith("align")
        )
    rates = prepare_model_for_stage(model, stage, train_vision_tower=bool(train_tower))
    for group, rate in config.optim.learning_rates.items():  # a learning rate given for a group trains it
        rates[group] = rate
        for _, parameter in model.parameter_groups()[group]:
            parameter.requires_grad_(True)
    if args.bf16 and not any(p.requires_grad for p in model.language_model.parameters()):
        # A frozen LLM is only read: held in bf16, mixed precision does not cast it again at every step (half the
        # memory; on a CPU with AMX a stage-1 step 1.5-2x faster). Checkpoints leave it out (`WingsTrainer._save`).
        model.language_model.to(torch.bfloat16)
    frozen = freeze_vision_parameters_without_gradient(model)
    if model.vision_tower is not None and not any(p.requires_grad for p in model.vision_tower.parameters()):
        model.enable_vision_feature_cache()  # a frozen tower: each image's features are computed once per run

    dataset = build_dataset(
        {"datasets": config.data.datasets},
        processor,
        config.data.max_length,
        config.data.skip_invalid_samples,
        seed=args.seed,
    )
    for part in dataset.datasets:
        print(f"data {part.path}: {part.summary()}")
    if len(dataset) == 0:
        raise ValueError("no usable training sample: see the data summary above (`wings data check FILE`)")
    if config.model.image_normalization == "data":
        set_image_statistics(processor, dataset.datasets)

    models = {
        "llm": model_fingerprint(model.config.base_llm, _local_dir(model.config.base_llm)),
        "vision_tower": model_fingerprint(model.config.base_vision, _local_dir(model.config.base_vision)),
        "init_from": config.model.init_from,
    }
    record = stage_record(
        stage.name,
        config.to_dict(),
        models,
        data_fingerprint(config.data.datasets, dataset),
        config.model.init_from,
        command,
        args.world_size,
    )
    record.update(status="running", learning_rates=rates, frozen_vision_parameters=frozen)
    trainer = WingsTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=WingsCollator(processor.pad_token_id, padding_side=config.data.padding_side),
        processing_class=processor,
        group_learning_rates=rates,
        group_weight_decay=config.optim.weight_decay,
        llm_reference=llm_reference,
        provenance=record,
        group_by_length=config.data.group_by_length,
        loraplus_lr_ratio=config.optim.loraplus_lr_ratio,
        callbacks=callbacks,
    )
    record["distributed"] = trainer.accelerator.distributed_type.value  # e.g. MULTI_GPU, DEEPSPEED, FSDP
    resume = choose_checkpoint(output_dir, config.training.get("resume_from_checkpoint"))
    if resume:
        print(f"resuming from {resume}")
    elif args.should_save:  # a fresh start: skips logged by an earlier run of this folder are not this run's
        shutil.rmtree(output_dir / DATA_EVENTS, ignore_errors=True)
    for part in dataset.datasets:
        part.events_dir = str(output_dir / DATA_EVENTS)
    result = trainer.train(resume_from_checkpoint=resume)
    save_final(trainer, output_dir, result.metrics)
    return output_dir


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why `folder` cannot be resumed from, naming the damaged file (None: every file is whole).

    Checks that trainer_state.json parses, that every safetensors file is as long as its header says, and that
    every torch file (optimizer.pt, scheduler.pt, rng_state*.pth, training_args.bin) has its zip directory,
    which a file cut short lacks. Reads headers only, never the tensors."""
    folder = Path(folder)
    if not folder.is_dir():
        return "no such checkpoint folder"
    state = folder / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except FileNotFoundError:
        return "trainer_state.json is missing"
    except (ValueError, UnicodeDecodeError) as error:
        return f"trainer_state.json is damaged ({error})"
    weights = sorted(folder.glob("*.safetensors"))
    if not weights and not any(folder.glob("*.bin")) and not any(folder.glob("global_step*")):
        return "no model weights (model.safetensors) in it"
    for path in weights:
        problem = _safetensors_problem(path)
        if problem:
            return f"{path.name} is damaged ({problem})"
    for path in sorted([*folder.glob("*.pt"), *folder.glob("*.pth"), *folder.glob("*.bin")]):
        try:
            with zipfile.ZipFile(path) as archive:
                archive.namelist()
        except (zipfile.BadZipFile, OSError) as error:
            return f"{path.name} is damaged ({error}; cut short?)"
    return None


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{size} bytes: no header"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return f"its header says {length} bytes but the file has {size}"
        try:
            header = json.loads(handle.read(length))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError) as error:
            return f"unreadable header ({error})"
    if 8 + length + end != size:
        return f"{size} bytes where its header says {8 + length + end}"
    return None


def choose_checkpoint(output_dir: Path, requested: str | None = None) -> str | None:
    """The checkpoint to resume from: `requested` (which must be whole), else the newest whole one in `output_dir`.

    A damaged newer checkpoint is skipped with a warning that names its damaged file. Raises ValueError when
    checkpoints exist but none is whole (delete them to start over, or name one)."""
    if requested:
        problem = checkpoint_problem(requested)
        if problem:
            raise ValueError(f"training.resume_from_checkpoint (--resume-from) {requested}: {problem}")
        return str(requested)
    if not output_dir.is_dir():
        return None
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    found = sorted(
        (
            (int(match.group(1)), path)
            for path in output_dir.iterdir()
            if (match := pattern.match(path.name)) and path.is_dir()
        ),
        reverse=True,
    )
    damaged = []
    for _, path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            for name, reason in damaged:
                message = f"checkpoint {name} is damaged: {reason}; resuming from the previous complete one, {path}"
                logger.warning(message)
                print(f"warning: {message}")
            return str(path)
        damaged.append((path, problem))
    if damaged:
        listing = "; ".join(f"{path}: {problem}" for path, problem in damaged)
        raise ValueError(
            f"no complete checkpoint to resume from ({listing}); delete the damaged checkpoint folders "
            "to start over, or name a good one with --resume-from"
        )
    return None


def set_image_statistics(processor: WingsProcessor, datasets: list[Any], limit: int = 1000) -> None:
    """Normalise pixels with the per-channel mean and std of the training images (`ConversationDataset`s; up to
    `limit` images, spread evenly over the data). The processor is saved with the model: inference does alike."""
    records = [(part, int(index)) for part in datasets for index in part.indices[part.has_images]]
    chosen: dict[str, None] = {}  # distinct images, in order
    for part, index in records[:: max(1, len(records) // limit)]:
        chosen |= dict.fromkeys(part.conversation(index).images)
        if len(chosen) >= limit:
            break
    if not chosen:
        raise ValueError("model.image_normalization=data: the training data has no image")
    mean, std = pixel_statistics(list(chosen), processor.image_processor.size["height"])
    processor.image_processor.image_mean, processor.image_processor.image_std = mean, std
    print(
        f"pixel normalisation from {len(chosen)} training images: mean {[round(v, 3) for v in mean]}, "
        f"std {[round(v, 3) for v in std]}"
    )


def _local_dir(name: str | None) -> str | None:
    if not name or name in VISION_PRESETS:
        return None
    try:
        path = resolve_llm(name)
    except (FileNotFoundError, ValueError):
        return None
    return path if Path(path).is_dir() else None
