"""`WingsTrainer`: transformers' Trainer with per-group learning rates, modality/length-grouped batches,
atomic checkpoints that leave out a frozen LLM, a stop on a non-finite loss, tokens/s in the logs, and a
provenance record in every checkpoint."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from wings.data.sampler import LengthGroupedSampler

PROVENANCE_FILE = "provenance.json"


def warmup_from_above_zero(factor: Callable[[int], float], warmup: int) -> Callable[[int], float]:
    """A linear warmup of `warmup` steps that starts at 1/(warmup+1) instead of 0: transformers' schedules give step 0
    the factor 0/warmup, which wastes the first optimizer step (half of a two-step stage). Step s < warmup gets
    (s+1)/(warmup+1); from step `warmup` on, `factor` is unchanged (its decay starts at 1)."""

    def shifted(step: int) -> float:
        return (step + 1) / (warmup + 1) if step < warmup else factor(step)

    return shifted


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite: the run stops and keeps its last good checkpoint."""


def is_learner_up_projection(group: str, name: str) -> bool:
    """A learner's B (up) projection: what LoRA+ (`loraplus_lr_ratio`) trains faster. B starts at zero and its A
    only learns once B has grown."""
    return group.endswith("_learners") and name.endswith(".up.weight")


class WingsTrainer(Trainer):
    """Trainer for one WINGS stage.

    Args (besides Trainer's):
        group_learning_rates: learning rate of each trained parameter group (from the stage).
        group_weight_decay: weight decay per group (default: `args.weight_decay` on matrices, 0 on biases/norms).
        llm_reference: where the LLM's weights can be read again; when the LLM is frozen, checkpoints leave them
            out and point here instead.
        provenance: the record written beside every checkpoint (updated with the step and metrics).
        group_by_length: use the modality- and length-grouped sampler.
        loraplus_lr_ratio: the learners' B (up) projections train at this multiple of their group's rate (LoRA+).
    """

    def __init__(
        self,
        *args: Any,
        group_learning_rates: dict[str, float],
        group_weight_decay: dict[str, float] | None = None,
        llm_reference: str | None = None,
        provenance: dict[str, Any] | None = None,
        group_by_length: bool = True,
        loraplus_lr_ratio: float = 1.0,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.group_learning_rates = group_learning_rates
        self.group_weight_decay = group_weight_decay or {}
        self.llm_reference = llm_reference
        self.provenance = provenance or {}
        self.group_by_length = group_by_length
        self.loraplus_lr_ratio = loraplus_lr_ratio
        self._tokens_since_log = 0
        self._last_log_time = time.perf_counter()
        self._checkpoint_root: str | None = None

    # ----- optimisation ----------------------------------------------------------------------------------------
    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """One optimizer param group per (parameter group, decay or not), each with its own learning rate."""
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        decay_names = set(self.get_decay_parameter_names(model))
        param_groups = []
        for group, named in self.model.parameter_groups().items():
            if group not in self.group_learning_rates:
                continue
            decay = self.group_weight_decay.get(group, self.args.weight_decay)
            up_ratio = self.loraplus_lr_ratio if group.endswith("_learners") else 1.0
            for is_up, with_decay in itertools.product((False, True), (True, False)):
                params = [
                    p
                    for n, p in named
                    if p.requires_grad
                    and (n in decay_names) == with_decay
                    and (up_ratio != 1.0 and is_learner_up_projection(group, n)) == is_up
                ]
                if params:
                    param_groups.append(
                        {
                            "params": params,
                            "lr": self.group_learning_rates[group] * (up_ratio if is_up else 1.0),
                            "weight_decay": decay if with_decay else 0.0,
                            "name": f"{group}{'.up' if is_up else ''}{'' if with_decay else '.no_decay'}",
                        }
                    )
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        optimizer_kwargs.pop("lr", None)  # every group carries its own
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """transformers' schedule, with a warmup that never spends an optimizer step at learning rate 0."""
        if self.lr_scheduler is not None:
            return self.lr_scheduler
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        warmup = self.args.get_warmup_steps(num_training_steps)
        if warmup > 0 and isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            scheduler.lr_lambdas = [warmup_from_above_zero(factor, warmup) for factor in scheduler.lr_lambdas]
            step = scheduler.last_epoch
            last_lr = [base * factor(step) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
            for group, lr in zip(scheduler.optimizer.param_groups, last_lr):  # the first step's rate, set at creation
                group["lr"] = lr
            scheduler._last_lr = last_lr
        return scheduler

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.group_by_length or not hasattr(dataset, "lengths"):
            return super()._get_train_sampler(train_dataset)
        batch = self.args.per_device_train_batch_size * self.args.world_size
        return LengthGroupedSampler(dataset.lengths, getattr(dataset, "has_images", None), batch, seed=self.args.seed)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._tokens_since_log += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else 0
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            last = self._last_checkpoint()
            raise TrainingDivergedError(
                f"the training loss became {loss.item()} at step {self.state.global_step + 1}: stopping. "
                f"{f'The last good checkpoint is {last}. ' if last else 'No checkpoint was written yet. '}"
                "Lower the learning rates (optim.learning_rates), check the data, or use fp32 instead of fp16."
            )
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        now = time.perf_counter()
        if "loss" in logs and now > self._last_log_time:
            tokens = self._tokens_since_log * self.args.world_size
            logs["tokens_per_second"] = round(tokens / (now - self._last_log_time), 1)
            self._tokens_since_log, self._last_log_time = 0, now
        super().log(logs, start_time)

    # ----- checkpoints -----------------------------------------------------------------------------------------
    def _get_output_dir(self, trial) -> str:
        return self._checkpoint_root or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Write the checkpoint into a staging folder and rename it into place: a kill never leaves half of one."""
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, ".staging")
        self._checkpoint_root = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._checkpoint_root = None
        if self.args.should_save:
            staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
            self.write_provenance(staged)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(staged, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the model; with the LLM frozen, leave its weights out and point to where they come from."""
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        llm_frozen = not any(p.requires_grad for _, p in model.parameter_groups()["llm"])
        if self.llm_reference and llm_frozen:
            state_dict = state_dict if state_dict is not None else model.state_dict()
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("language_model.")}
            model.config.llm_checkpoint = self.llm_reference
        else:
            model.config.llm_checkpoint = None
        super()._save(output_dir, state_dict)

    def _last_checkpoint(self) -> str | None:
        run_dir = self.args.output_dir
        if not os.path.isdir(run_dir):
            return None
        steps = [int(n.split("-")[-1]) for n in os.listdir(run_dir) if n.startswith(PREFIX_CHECKPOINT_DIR + "-")]
        return os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{max(steps)}") if steps else None

    def write_provenance(self, directory: str, metrics: dict[str, Any] | None = None) -> None:
        record = dict(self.provenance)
        record["global_step"] = self.state.global_step
        record["log_history"] = self.state.log_history[-20:]
        if metrics is not None:
            record["metrics"] = metrics
        with open(os.path.join(directory, PROVENANCE_FILE), "w") as handle:
            json.dump(record, handle, indent=2, default=str)
