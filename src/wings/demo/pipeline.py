"""The `wings demo` pipeline: data -> WINGS and LLaVA-style training -> evaluation -> attention shift -> report.

Every step writes its output folder or file and is skipped when that output exists, so a second run reuses
what is done and an interrupted one resumes (a training stage also resumes from its last checkpoint).

    runs/demo/
      data/easy-vqa/              converted easy-vqa (conversations capped at `max_turns` questions)
      wings-align/ wings-instruct/            WINGS, stage 1 and 2
      llava-align/ llava-instruct/            the LLaVA-style baseline at its own recipe's learning rates
      llava-matched-align/ llava-matched-instruct/   the baseline at WINGS' learning rates (align is shared
                                              with llava-align when the two rates agree)
      visual-instruct/            --ablations: stage 2 with the visual learner alone (from wings-align)
      eval/results.json           `wings eval`'s results for the base LLM and every model
      analysis/attention_shift.json
      report.md results.json training_curves.png forgetting.png laws.png
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import TrainerCallback

from wings.analysis.attention_shift import analyze_model
from wings.analysis.cli import load_processor, sample_texts, tokenize_samples
from wings.data.easy_vqa import align_file_name, check_align_shares, convert_easy_vqa, write_align_set
from wings.data.formats import read_jsonl
from wings.demo.report import write_demo_report
from wings.demo.settings import SCRATCH_TOWER_RATE, DemoSettings, seeded_runs
from wings.evaluation.report import write_report
from wings.evaluation.runner import EvalSettings, evaluate_models, load_eval_model
from wings.evaluation.tasks import retention_file
from wings.model.configuration_wings import check_vision_feature_layer
from wings.model.vision_towers import is_scratch_preset, tower_config
from wings.threads import cpu_has_amx, matmul_gflops
from wings.threads import set_threads as _set_threads
from wings.training.arguments import build_config
from wings.training.run import run_stage


class LossLog(TrainerCallback):
    """Keeps the Trainer's logged losses (step, loss, learning rate) for the training-curve plot."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.history.append(
                {
                    "step": state.global_step,
                    "loss": float(logs["loss"]),
                    "learning_rate": float(logs.get("learning_rate", 0.0)),
                }
            )


class ThreadChoice(TrainerCallback):
    """Re-measures the intra-op thread count every `every` training steps: the machine's load changes within a stage."""

    def __init__(self, every: int = 10) -> None:
        self.every = every

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            _set_threads(None)


@dataclass
class Step:
    """One step of the pipeline: skipped when `output` exists."""

    name: str
    output: Path
    run: Callable[[], Any]
    stage: tuple[str, str, dict[str, float], str | None, int] | None = None  # a training step's train() arguments


def stage_differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The settings (as `section.key`) in which a stage's recorded configuration differs from the one it would be
    trained with now; a key only one of them has (a record of an older version) counts as different."""
    compared = {
        "model": list(wanted["model"]),
        "data": ["datasets", "max_length"],
        "optim": ["learning_rates", "loraplus_lr_ratio"],
        "training": ["max_steps", "per_device_train_batch_size", "seed", "bf16"],
    }
    missing = object()
    return [
        f"{section}.{key}"
        for section, keys in compared.items()
        for key in keys
        if recorded.get(section, {}).get(key, missing) != wanted[section].get(key, missing)
    ]


class DemoPipeline:
    """Builds the list of steps from the settings and runs them in order, skipping finished ones."""

    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        self.out = Path(settings.out)
        self.data_dir = self.out / "data" / "easy-vqa"
        self.timings: dict[str, float] = {}
        self.threads: dict[str, int] = {}  # intra-op threads each step ran with (this run)
        self.speed: dict[str, float] = {}  # the machine's float32 GFLOPS before each step (this run)
        self.skipped: list[str] = []
        self.trained: set[str] = set()  # stage folders trained in this run: what starts from them is redone
        self.outdated: set[str] = set()  # finished stage folders trained with other settings: trained again

    # ------------------------------------------------------------------------------------------ steps
    def steps(self) -> list[Step]:
        steps = [Step("data", self.data_dir / align_file_name(self.settings.align_shares), self.convert_data)]
        seen: set[str] = set()
        for run in seeded_runs(self.settings):
            for (stage, folder, rates), init in ((run.align, None), (run.instruct, run.align[1])):
                if folder not in seen:
                    seen.add(folder)
                    steps.append(
                        Step(
                            f"train {folder}",
                            self.out / folder / "provenance.json",
                            lambda s=stage, f=folder, r=rates, i=init, seed=run.seed: self.train(s, f, r, i, seed),
                            (stage, folder, rates, init, run.seed),
                        )
                    )
        steps += [
            Step("check align", self.out / "eval" / "align_identity.json", self.check_align_identity),
            Step("evaluate", self.out / "eval" / "results.json", self.evaluate),
            Step("attention shift", self.out / "analysis" / "attention_shift.json", self.analyze),
        ]
        return steps

    def run(self) -> dict[str, Any]:
        """Run every step not yet done, then write the report; returns the report's numbers."""
        if self.settings.vision_feature_layer is not None:  # refused here, not when stage 1 builds its model
            check_vision_feature_layer(tower_config(self.settings.vision), self.settings.vision_feature_layer)
        check_align_shares(self.settings.align_shares)  # refused here, not after the data step
        self.out.mkdir(parents=True, exist_ok=True)
        steps = self.steps()
        started = time.perf_counter()
        for number, step in enumerate(steps, 1):
            if step.output.exists() and self._is_current(step):
                print(f"[{number}/{len(steps)}] {step.name}: done before ({step.output}), skipped")
                self.skipped.append(step.name)
                continue
            threads = _set_threads(self.settings.threads)
            print(f"[{number}/{len(steps)}] {step.name} ({threads} thread{'s' * (threads > 1)})")
            self.threads[step.name] = threads
            self.speed[step.name] = round(matmul_gflops(), 1)
            begin = time.perf_counter()
            step.run()
            self.timings[step.name] = round(time.perf_counter() - begin, 1)
        self.timings["total (this run)"] = round(time.perf_counter() - started, 1)
        timings_file = self.out / "timings.json"  # seconds per step over all runs that did the step
        done = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
        done |= {name: value for name, value in self.timings.items() if name != "total (this run)"}
        timings_file.write_text(json.dumps(done, indent=1) + "\n")
        self.timings = done | {"total (this run)": self.timings["total (this run)"]}
        return write_demo_report(self)

    def _is_current(self, step: Step) -> bool:
        """A finished stage is reused when it was trained with the settings it would be trained with now, from a
        stage not trained again in this run; the checks, evaluation and analysis are redone when a stage was
        trained in this run or the set of models changed (e.g. --ablations added)."""
        if step.stage is not None:
            provenance = json.loads(step.output.read_text())
            if provenance.get("status") != "complete":
                return False  # an interrupted stage: run_stage resumes it from its last checkpoint
            _, folder, _, init_from, _ = step.stage
            changed = stage_differences(provenance.get("config", {}), self.stage_config(*step.stage))
            if init_from in self.trained:
                changed.append(f"{init_from} trained again")
            if changed:
                print(f"{step.name}: trained with other settings ({', '.join(changed)}): training it again")
                self.outdated.add(folder)
            return not changed
        if self.trained:
            return False
        if step.name in ("evaluate", "attention shift"):
            names = json.loads(step.output.read_text()).get("models", {})
            return set(names) >= set(self.model_names())
        return True

    def model_names(self) -> list[str]:
        return ["base LLM"] + [run.name for run in seeded_runs(self.settings)]

    def model_dirs(self) -> dict[str, Path]:
        return {run.name: self.out / run.instruct[1] for run in seeded_runs(self.settings)}

    # ------------------------------------------------------------------------------------------ data
    def convert_data(self) -> None:
        counts = convert_easy_vqa(
            self.data_dir, self.settings.easy_vqa_source, max_turns=self.settings.max_turns, seed=self.settings.seed
        )
        print(f"easy-vqa: {counts}")
        shares = self.settings.align_shares
        counts = write_align_set(self.data_dir, seed=self.settings.seed, shares=shares)
        print(f"stage 1 data ({align_file_name(shares)}): {counts}")

    # ------------------------------------------------------------------------------------------ training
    def stage_config(
        self, stage: str, folder: str, rates: dict[str, float], init_from: str | None, seed: int = 0
    ) -> dict[str, Any]:
        """The `wings train` configuration of one of the demo's stages, as a mapping."""
        s = self.settings
        steps = s.align_steps if init_from is None else s.instruct_steps
        model: dict[str, Any] = {"lorra_rank": s.lorra_rank, "router_init_visual_weight": s.router_init_visual_weight}
        rates = dict(rates)
        # Stage 1 aligns on descriptions (see write_align_set) unless told to use the full mix.
        data_file = align_file_name(s.align_shares) if init_from is None and s.align_on_descriptions else "train.json"
        training: dict[str, Any] = {}
        if init_from is None:
            training["bf16"] = self.align_bf16()
            if training["bf16"]:
                model["attn_implementation"] = "eager"
        if init_from is None:
            scratch = is_scratch_preset(s.vision)  # trained in stage 1; a pretrained tower stays frozen
            model |= {"llm": s.llm, "vision": s.vision, "train_vision_tower": scratch, "system_prompt": s.system_prompt}
            if s.vision_feature_layer is not None:
                model["vision_feature_layer"] = s.vision_feature_layer
            if scratch:
                rates["vision_tower"] = SCRATCH_TOWER_RATE
        else:
            model["init_from"] = str(self.out / init_from)
        return {
            "stage": stage,
            "model": model,
            "data": {
                "datasets": [{"path": str(self.data_dir / data_file), "image_folder": str(self.data_dir)}],
                "max_length": s.max_length,
            },
            "optim": {
                "learning_rates": dict(rates),
                "loraplus_lr_ratio": s.loraplus_lr_ratio if init_from is None else 1.0,
            },
            "training": {
                "output_dir": str(self.out / folder),
                "max_steps": steps,
                "per_device_train_batch_size": s.batch_size,
                "logging_steps": max(1, steps // 20),
                "save_steps": s.save_steps,
                "save_total_limit": 1,
                "report_to": "none",
                "use_cpu": s.use_cpu,
                "seed": seed,
                "disable_tqdm": not s.progress,
                **training,
            },
        }

    def align_bf16(self) -> bool:
        """Whether stage 1 trains in bf16 (`DemoSettings.align_bf16`; None: on a CPU with AMX bf16 units)."""
        if self.settings.align_bf16 is not None:
            return self.settings.align_bf16
        return self.settings.use_cpu and cpu_has_amx()

    def train(self, stage: str, folder: str, rates: dict[str, float], init_from: str | None, seed: int = 0) -> None:
        log = LossLog()
        callbacks = [log] if self.settings.threads else [log, ThreadChoice()]
        config = build_config(self.stage_config(stage, folder, rates, init_from, seed), f"demo stage {folder}")
        output = run_stage(config, command=f"wings demo ({folder})", callbacks=callbacks, force=folder in self.outdated)
        self.trained.add(folder)
        (output / "loss_history.json").write_text(json.dumps(log.history, indent=1) + "\n")
        # The stage is complete (its model is saved beside): its checkpoints were only for resuming it, and a
        # stage-2 one holds 1.6 GB of weights and optimizer state.
        for checkpoint in output.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)

    # ------------------------------------------------------------------------------------------ checks
    def check_align_identity(self) -> None:
        """After align the LLM is untouched and text-only input skips the visual learner: the WINGS model's
        text-only logits and greedy continuations must equal the base LLM's."""
        base = load_eval_model(self.settings.llm)
        aligned = load_eval_model(str(self.out / "wings-align"))
        prompts = [record["prompt"] for record in read_jsonl(retention_file("prompts.jsonl"))][:4]
        max_diff, same = 0.0, 0
        with torch.no_grad():
            for prompt in prompts:
                ids = base.tokenizer(prompt, return_tensors="pt").input_ids
                a, b = base.model(ids).logits, aligned.model(input_ids=ids).logits
                max_diff = max(max_diff, (a - b).abs().max().item())
                options = dict(max_new_tokens=8, do_sample=False)
                same += torch.equal(
                    base.model.generate(ids, **options), aligned.model.generate(input_ids=ids, **options)
                )
        result = {
            "prompts": len(prompts),
            "max_abs_logit_diff": max_diff,
            "identical_greedy": same,
            "identical": max_diff == 0.0 and same == len(prompts),
        }
        print(
            f"after align, text-only: max |logit diff| {max_diff:.3g}, identical greedy outputs {same}/{len(prompts)}"
        )
        path = self.out / "eval" / "align_identity.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")

    # ------------------------------------------------------------------------------------------ evaluation
    def load_models(self) -> tuple[Any, list[Any]]:
        base = load_eval_model(self.settings.llm)
        base.name = "base LLM"
        models = []
        for name, folder in self.model_dirs().items():
            entry = load_eval_model(str(folder))
            entry.name = name
            models.append(entry)
        return base, models

    def evaluate(self) -> None:
        """easy-vqa (limited to `vqa_limit` questions) and the retention suite, all models side by side."""
        s = self.settings
        base, models = self.load_models()
        common = dict(batch_size=s.eval_batch_size, vqa_max_new_tokens=4, progress=s.progress, cache_dir=s.eval_cache)
        vqa = evaluate_models(
            models,
            base,
            EvalSettings([f"easyvqa:{self.data_dir}"], limit=s.vqa_limit, vqa_swap_limit=s.swap_limit, **common),
        )
        _set_threads(s.threads)  # the load may have changed since the step began
        text = evaluate_models(models, base, EvalSettings(["retention"], limit=s.retention_limit, **common))
        results = dict(text)
        results["models"] = {name: vqa["models"][name] | text["models"][name] for name in text["models"]}
        results["tasks"] = vqa["tasks"] | text["tasks"]
        results["settings"] = text["settings"] | {"vqa_limit": s.vqa_limit, "retention_limit": s.retention_limit}
        write_report(results, self.out / "eval")

    def analyze(self) -> None:
        """LAWS curves and attention shift of every model on the same easy-vqa test conversations."""
        records = json.loads((self.data_dir / "test.json").read_text())[: self.settings.attention_samples]
        samples_file = self.out / "analysis" / "samples.jsonl"
        samples_file.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for record in records:  # one question and its answer per sample: text before, the image, text after
            lines.append(
                {
                    "id": record["id"],
                    "image": str((self.data_dir / record["image"]).resolve()),
                    "conversations": record["conversations"][:2],
                }
            )
        samples_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
        base, models = self.load_models()
        results: dict[str, Any] = {"samples": str(samples_file), "models": {}}
        for entry in tqdm([base] + models, desc="attention shift", disable=not self.settings.progress):
            _set_threads(self.settings.threads)
            folder = self.model_dirs().get(entry.name)
            processor = load_processor(entry, str(folder)) if folder else None
            samples = tokenize_samples(
                sample_texts(samples_file, entry.tokenizer, processor=processor), entry.tokenizer
            )
            analysis = analyze_model(entry.model, samples, processor)
            analysis.pop("samples")
            results["models"][entry.name] = analysis
        (self.out / "analysis" / "attention_shift.json").write_text(json.dumps(results, indent=1) + "\n")
