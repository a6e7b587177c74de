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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from wings.model.vision_towers import is_scratch_preset
from wings.threads import measured_threads  # noqa: F401  (re-exported: the demo's thread choice)
from wings.threads import set_threads as _set_threads

# Learning rates of the demo. The authors' rates (WINGS.md) are for ~600k samples per stage; a few hundred
# steps need larger ones for the modules that start from nothing (projector, learners, routers). The
# LLM keeps each recipe's own rate (WINGS 2e-6, LLaVA 2e-5), so the recipes differ as in the paper. The vision
# tower is frozen (WINGS.md) unless it is a from-scratch preset, which stage 1 trains at SCRATCH_TOWER_RATE.
SCRATCH_TOWER_RATE = 1e-3
WINGS_RATES: dict[str, dict[str, float]] = {
    "align": {"projector": 1e-3, "visual_learners": 1e-3},
    "instruct": {"projector": 1e-4, "visual_learners": 1e-4, "textual_learners": 1e-4, "routers": 1e-3,
                 "llm": 2e-6},
}
LLAVA_RATES: dict[str, dict[str, float]] = {
    "llava-align": {"projector": 1e-3},
    "llava-instruct": {"projector": 2e-5, "llm": 2e-5},
}


@dataclass
class DemoSettings:
    """What `wings demo` runs; `default()` and `quick()` are the presets of the command line."""

    out: Path = Path("runs/demo")
    llm: str = "smollm2-135m-instruct"  # registry name, hub id or directory
    # EfficientNet-Lite0 pretrained on ImageNet, frozen: 112 px -> 16 visual tokens (`wings.model.vision_towers`)
    vision: str = "efficientnet-lite0-in1k"
    easy_vqa_source: Path | None = None  # easy-vqa's raw data folder (default: the installed package's)
    # Questions per training conversation. Measured (docs/results/demo.md): 2 per conversation scored lower than 1
    # with both towers (the pretrained one: an image's colour answer then gave its shape question away).
    max_turns: int = 1
    # Stage 1 on what the images show (colour and shape questions) and as many yes/no questions, as the paper
    # aligns on captions (`write_align_set`); False: on easy-vqa's own mix (three yes/no questions in four).
    align_on_descriptions: bool = True
    # Stage 1 trains the learners' zero-initialised B at this multiple of their rate (LoRA+): measured, colour
    # questions learn several times faster (docs/results/demo.md).
    loraplus_lr_ratio: float = 10.0
    lorra_rank: int = 8
    router_init_visual_weight: float | None = None  # routers' initial w_v at tokens that see an image (None: config's)
    max_length: int = 64
    batch_size: int = 8
    # Stage 1 carries the visual learning (LLM frozen, ~2 s a step); stage 2 trains the LLM (~4 s a step).
    align_steps: int = 250
    instruct_steps: int = 8
    save_steps: int = 50  # checkpoints for resuming a stage (a stage-2 one: ~1.6 GB of weights and optimizer state)
    wings_rates: dict[str, dict[str, float]] = field(default_factory=lambda: {k: dict(v) for k, v in WINGS_RATES.items()})
    llava_rates: dict[str, dict[str, float]] = field(default_factory=lambda: {k: dict(v) for k, v in LLAVA_RATES.items()})
    vqa_limit: int | None = 500  # easy-vqa test questions scored, a seeded sample (None: all 9,673)
    swap_limit: int | None = 200  # of those, asked again about another image (the image-swap column)
    retention_limit: int | None = None  # retention_mc questions and retention_lm prompts (None: all)
    attention_samples: int = 8  # easy-vqa test conversations for the attention shift
    eval_batch_size: int = 64  # larger CPU matrix products: multiple choice ~1.4x faster than at 16
    # The base LLM's scores and reference continuations, kept between runs (None: always recomputed).
    eval_cache: Path | None = field(default_factory=lambda: _wings_cache() / "eval")
    threads: int | None = None  # torch intra-op threads; None: measured before each step (`measured_threads`)
    ablations: bool = False  # add the visual-learner-alone model (stage 2 without textual learner and router)
    seed: int = 0
    seeds: int = 1  # train every model this many times (seeds seed, seed + 1, ...): the report gives mean and spread
    use_cpu: bool = True  # a GPU demo: pass False
    progress: bool = True

    @classmethod
    def default(cls, **overrides: Any) -> DemoSettings:
        return cls(**overrides)

    @classmethod
    def quick(cls, **overrides: Any) -> DemoSettings:
        """A minutes-long check of the whole pipeline (numbers far from converged)."""
        values = dict(out=Path("runs/demo-quick"), batch_size=4, align_steps=12, instruct_steps=2, save_steps=1000,
                      vqa_limit=48, retention_limit=16, attention_samples=4)  # fmt: skip
        return cls(**(values | overrides))


@dataclass
class ModelRun:
    """One compared model: its name in the report and its two training stages."""

    name: str
    align: tuple[str, str, dict[str, float]]  # (stage, output folder name, learning rates)
    instruct: tuple[str, str, dict[str, float]]
    seed: int = 0


SEED_TAG = " [seed "  # "WINGS [seed 1]": the same model trained with another seed (--seeds)


def seeded_runs(settings: DemoSettings) -> list[ModelRun]:
    """`model_runs` once per seed: the first seed keeps the plain names and folders, the others are tagged."""
    runs = []
    for seed in range(settings.seed, settings.seed + settings.seeds):
        for run in model_runs(settings):
            if seed == settings.seed:
                runs.append(ModelRun(run.name, run.align, run.instruct, seed))
            else:
                tag = f"-seed{seed}"
                runs.append(ModelRun(f"{run.name}{SEED_TAG}{seed}]", (run.align[0], run.align[1] + tag, run.align[2]),
                                     (run.instruct[0], run.instruct[1] + tag, run.instruct[2]), seed))  # fmt: skip
    return runs


def model_runs(settings: DemoSettings) -> list[ModelRun]:
    """WINGS, the LLaVA-style baseline, the baseline at WINGS' learning rates, and (--ablations) the visual
    learner alone. Stages with the same stage name and learning rates share one output folder."""
    wings, llava = settings.wings_rates, settings.llava_rates
    matched_align = {group: rate for group, rate in wings["align"].items() if group in ("projector", "vision_tower")}
    matched_instruct = {group: wings["instruct"][group] for group in ("projector", "llm")}
    align_folder = "llava-align" if matched_align == llava["llava-align"] else "llava-matched-align"
    runs = [
        ModelRun("WINGS", ("align", "wings-align", wings["align"]), ("instruct", "wings-instruct", wings["instruct"])),
        ModelRun("LLaVA", ("llava-align", "llava-align", llava["llava-align"]),
                 ("llava-instruct", "llava-instruct", llava["llava-instruct"])),
        ModelRun("LLaVA (WINGS LR)", ("llava-align", align_folder, matched_align),
                 ("llava-instruct", "llava-matched-instruct", matched_instruct)),
    ]  # fmt: skip
    if settings.ablations:
        visual = {group: rate for group, rate in wings["instruct"].items() if group not in ("textual_learners", "routers")}
        runs.append(ModelRun("visual learner only", ("align", "wings-align", wings["align"]),
                             ("instruct-visual", "visual-instruct", visual)))  # fmt: skip
    return runs


class LossLog(TrainerCallback):
    """Keeps the Trainer's logged losses (step, loss, learning rate) for the training-curve plot."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 (Trainer's signature)
        if logs and "loss" in logs:
            self.history.append({"step": state.global_step, "loss": float(logs["loss"]),
                                 "learning_rate": float(logs.get("learning_rate", 0.0))})  # fmt: skip


class ThreadChoice(TrainerCallback):
    """Re-measures the intra-op thread count every `every` training steps: the machine's load changes within a stage."""

    def __init__(self, every: int = 10) -> None:
        self.every = every

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer's signature)
        if state.global_step % self.every == 0:
            _set_threads(None)


@dataclass
class Step:
    """One step of the pipeline: skipped when `output` exists."""

    name: str
    output: Path
    run: Callable[[], Any]


class DemoPipeline:
    """Builds the list of steps from the settings and runs them in order, skipping finished ones."""

    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        self.out = Path(settings.out)
        self.data_dir = self.out / "data" / "easy-vqa"
        self.timings: dict[str, float] = {}
        self.threads: dict[str, int] = {}  # intra-op threads each step ran with (this run)
        self.skipped: list[str] = []

    # ------------------------------------------------------------------------------------------ steps
    def steps(self) -> list[Step]:
        steps = [Step("data", self.data_dir / "align.json", self.convert_data)]
        seen: set[str] = set()
        for run in seeded_runs(self.settings):
            for (stage, folder, rates), init in ((run.align, None), (run.instruct, run.align[1])):
                if folder not in seen:
                    seen.add(folder)
                    steps.append(Step(f"train {folder}", self.out / folder / "provenance.json",
                                      lambda s=stage, f=folder, r=rates, i=init, seed=run.seed: self.train(s, f, r, i, seed)))  # fmt: skip
        steps += [
            Step("check align", self.out / "eval" / "align_identity.json", self.check_align_identity),
            Step("evaluate", self.out / "eval" / "results.json", self.evaluate),
            Step("attention shift", self.out / "analysis" / "attention_shift.json", self.analyze),
        ]
        return steps

    def run(self) -> dict[str, Any]:
        """Run every step not yet done, then write the report; returns the report's numbers."""
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
            begin = time.perf_counter()
            step.run()
            self.timings[step.name] = round(time.perf_counter() - begin, 1)
        self.timings["total (this run)"] = round(time.perf_counter() - started, 1)
        timings_file = self.out / "timings.json"  # seconds per step over all runs that did the step
        done = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
        done |= {name: value for name, value in self.timings.items() if name != "total (this run)"}
        timings_file.write_text(json.dumps(done, indent=1) + "\n")
        self.timings = done | {"total (this run)": self.timings["total (this run)"]}
        from wings.demo.report import write_demo_report

        return write_demo_report(self)

    def _is_current(self, step: Step) -> bool:
        """Evaluation and analysis are redone when the set of models changed (e.g. --ablations added)."""
        if step.name in ("evaluate", "attention shift"):
            names = json.loads(step.output.read_text()).get("models", {})
            return set(names) >= set(self.model_names())
        if step.name.startswith("train"):
            return json.loads(step.output.read_text()).get("status") == "complete"
        return True

    def model_names(self) -> list[str]:
        return ["base LLM"] + [run.name for run in seeded_runs(self.settings)]

    def model_dirs(self) -> dict[str, Path]:
        return {run.name: self.out / run.instruct[1] for run in seeded_runs(self.settings)}

    # ------------------------------------------------------------------------------------------ data
    def convert_data(self) -> None:
        from wings.data.easy_vqa import convert_easy_vqa

        counts = convert_easy_vqa(self.data_dir, self.settings.easy_vqa_source, max_turns=self.settings.max_turns,
                                  seed=self.settings.seed)  # fmt: skip
        print(f"easy-vqa: {counts}")
        from wings.data.easy_vqa import write_align_set

        print(f"stage 1 data (align.json): {write_align_set(self.data_dir, seed=self.settings.seed)}")

    # ------------------------------------------------------------------------------------------ training
    def train(self, stage: str, folder: str, rates: dict[str, float], init_from: str | None, seed: int = 0) -> None:
        from wings.training.arguments import build_config
        from wings.training.run import run_stage

        s = self.settings
        steps = s.align_steps if init_from is None else s.instruct_steps
        model: dict[str, Any] = {"lorra_rank": s.lorra_rank, "router_init_visual_weight": s.router_init_visual_weight}
        rates = dict(rates)
        # Stage 1 aligns on descriptions (align.json, see write_align_set) unless told to use the full mix.
        data_file = "align.json" if init_from is None and s.align_on_descriptions else "train.json"
        if init_from is None:
            scratch = is_scratch_preset(s.vision)  # trained in stage 1; a pretrained tower stays frozen
            model |= {"llm": s.llm, "vision": s.vision, "train_vision_tower": scratch}
            if scratch:
                rates["vision_tower"] = SCRATCH_TOWER_RATE
        else:
            model["init_from"] = str(self.out / init_from)
        raw = {
            "stage": stage,
            "model": model,
            "data": {"datasets": [{"path": str(self.data_dir / data_file), "image_folder": str(self.data_dir)}],
                     "max_length": s.max_length},
            "optim": {"learning_rates": dict(rates), "loraplus_lr_ratio": s.loraplus_lr_ratio if init_from is None else 1.0},
            "training": {"output_dir": str(self.out / folder), "max_steps": steps, "per_device_train_batch_size":
                         s.batch_size, "logging_steps": max(1, steps // 20), "save_steps": s.save_steps,
                         "save_total_limit": 1, "report_to": "none", "use_cpu": s.use_cpu, "seed": seed,
                         "disable_tqdm": not s.progress},
        }  # fmt: skip
        log = LossLog()
        callbacks = [log] if s.threads else [log, ThreadChoice()]
        config = build_config(raw, f"demo stage {folder}")
        output = run_stage(config, command=f"wings demo ({folder})", callbacks=callbacks)
        (output / "loss_history.json").write_text(json.dumps(log.history, indent=1) + "\n")
        # The stage is complete (its model is saved beside): its checkpoints were only for resuming it, and a
        # stage-2 one holds 1.6 GB of weights and optimizer state.
        for checkpoint in output.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)

    # ------------------------------------------------------------------------------------------ checks
    def check_align_identity(self) -> None:
        """After align the LLM is untouched and text-only input skips the visual learner: the WINGS model's
        text-only logits and greedy continuations must equal the base LLM's."""
        import torch

        from wings.evaluation.runner import load_eval_model
        from wings.evaluation.tasks import _read_jsonl, retention_file

        base = load_eval_model(self.settings.llm)
        aligned = load_eval_model(str(self.out / "wings-align"))
        prompts = [record["prompt"] for record in _read_jsonl(retention_file("prompts.jsonl"))][:4]
        max_diff, same = 0.0, 0
        with torch.no_grad():
            for prompt in prompts:
                ids = base.tokenizer(prompt, return_tensors="pt").input_ids
                a, b = base.model(ids).logits, aligned.model(input_ids=ids).logits
                max_diff = max(max_diff, (a - b).abs().max().item())
                options = dict(max_new_tokens=8, do_sample=False)
                same += torch.equal(base.model.generate(ids, **options), aligned.model.generate(input_ids=ids, **options))
        result = {"prompts": len(prompts), "max_abs_logit_diff": max_diff, "identical_greedy": same,
                  "identical": max_diff == 0.0 and same == len(prompts)}  # fmt: skip
        print(f"after align, text-only: max |logit diff| {max_diff:.3g}, identical greedy outputs {same}/{len(prompts)}")
        path = self.out / "eval" / "align_identity.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")

    # ------------------------------------------------------------------------------------------ evaluation
    def load_models(self) -> tuple[Any, list[Any]]:
        from wings.evaluation.runner import load_eval_model

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
        from wings.evaluation.runner import EvalSettings, evaluate_models

        s = self.settings
        base, models = self.load_models()
        common = dict(batch_size=s.eval_batch_size, vqa_max_new_tokens=4, progress=s.progress, cache_dir=s.eval_cache)
        vqa = evaluate_models(models, base, EvalSettings([f"easyvqa:{self.data_dir}"], limit=s.vqa_limit,
                                                         vqa_swap_limit=s.swap_limit, **common))  # fmt: skip
        _set_threads(s.threads)  # the load may have changed since the step began
        text = evaluate_models(models, base, EvalSettings(["retention"], limit=s.retention_limit, **common))
        results = dict(text)
        results["models"] = {name: vqa["models"][name] | text["models"][name] for name in text["models"]}
        results["tasks"] = vqa["tasks"] | text["tasks"]
        results["settings"] = text["settings"] | {"vqa_limit": s.vqa_limit, "retention_limit": s.retention_limit}
        from wings.evaluation.report import write_report

        write_report(results, self.out / "eval")

    def analyze(self) -> None:
        """LAWS curves and attention shift of every model on the same easy-vqa test conversations."""
        from tqdm.auto import tqdm

        from wings.analysis.attention_shift import analyze_model
        from wings.analysis.cli import load_processor, sample_texts, tokenize_samples

        records = json.loads((self.data_dir / "test.json").read_text())[: self.settings.attention_samples]
        samples_file = self.out / "analysis" / "samples.jsonl"
        samples_file.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for record in records:  # one question and its answer per sample: text before, the image, text after
            lines.append({"id": record["id"], "image": str((self.data_dir / record["image"]).resolve()),
                          "conversations": record["conversations"][:2]})  # fmt: skip
        samples_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
        base, models = self.load_models()
        results: dict[str, Any] = {"samples": str(samples_file), "models": {}}
        for entry in tqdm([base] + models, desc="attention shift", disable=not self.settings.progress):
            _set_threads(self.settings.threads)
            samples = tokenize_samples(sample_texts(samples_file, entry.tokenizer), entry.tokenizer)
            folder = self.model_dirs().get(entry.name)
            processor = load_processor(entry, str(folder)) if folder else None
            analysis = analyze_model(entry.model, samples, processor)
            analysis.pop("samples")
            results["models"][entry.name] = analysis
        (self.out / "analysis" / "attention_shift.json").write_text(json.dumps(results, indent=1) + "\n")


def _wings_cache() -> Path:
    from wings.model.registry import cache_dir

    return cache_dir()


def settings_dict(settings: DemoSettings) -> dict[str, Any]:
    values = asdict(settings)
    return {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}
