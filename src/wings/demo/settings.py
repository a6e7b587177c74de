"""What `wings demo` runs: its settings (`DemoSettings`), learning rates and the compared models' runs and folders.

Shared by the pipeline, which trains and evaluates them, and the report, which names and groups them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wings.data.easy_vqa import ALIGN_SHARES
from wings.model.registry import cache_dir

# Learning rates of the demo. The authors' rates (WINGS.md) are for ~600k samples per stage; a few hundred
# steps need larger ones for the modules that start from nothing (projector, learners, routers). The
# LLM keeps each recipe's own rate (WINGS 2e-6, LLaVA 2e-5), so the recipes differ as in the paper. The vision
# tower is frozen (WINGS.md) unless it is a from-scratch preset, which stage 1 trains at SCRATCH_TOWER_RATE.
SCRATCH_TOWER_RATE = 1e-3
WINGS_RATES: dict[str, dict[str, float]] = {
    "align": {"projector": 1e-3, "visual_learners": 1e-3},
    "instruct": {"projector": 1e-4, "visual_learners": 1e-4, "textual_learners": 1e-4, "routers": 1e-3, "llm": 2e-6},
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
    vision_feature_layer: int | None = None  # the tower's hidden state the projector reads (None: the tower's own)
    easy_vqa_source: Path | None = None  # easy-vqa's raw data folder (default: the installed package's)
    # Questions per training conversation. Measured (docs/results/demo.md): 2 per conversation scored lower than 1
    # with both towers (the pretrained one: an image's colour answer then gave its shape question away).
    max_turns: int = 1
    # Stage 1 mostly on what the images show (colour and shape questions), as the paper aligns on captions
    # (`write_align_set`, in `align_shares`' mix); False: on easy-vqa's own mix (three yes/no questions in four).
    align_on_descriptions: bool = True
    align_shares: dict[str, float] = field(default_factory=lambda: dict(ALIGN_SHARES))
    # Stage 1 trains the learners' zero-initialised B at this multiple of their rate (LoRA+): measured, colour
    # questions learn several times faster (docs/results/demo.md).
    loraplus_lr_ratio: float = 10.0
    lorra_rank: int = 8
    router_init_visual_weight: float | None = None  # routers' initial w_v at tokens that see an image (None: config's)
    # An empty system turn instead of SmolLM2's 20-token default: a third of every sample's tokens, in training
    # and evaluation (measured: docs/results/demo.md). Saved with the models' processors.
    system_prompt: str | None = ""
    max_length: int = 64
    batch_size: int = 8
    # Stage 1 carries the visual learning (LLM frozen, ~1 s a step); stage 2 trains the LLM (~3 s a step). 350 stage-1
    # steps: open questions 91.7 (300: 89.3 with each of 3 seeds; docs/results/demo.md).
    align_steps: int = 350
    # Stage 1 (the LLM frozen) in bf16 mixed precision, the LLM held in bf16, its attention eager (on a CPU, torch's
    # bf16 SDPA backward is slow). None: where the CPU has AMX bf16 units (measured there: a stage-1 step 1.5-2x
    # faster; docs/results/demo.md). Stage 2 trains the LLM at 2e-6 and stays float32, as does every evaluation.
    align_bf16: bool | None = None
    instruct_steps: int = 8
    save_steps: int = 50  # checkpoints for resuming a stage (a stage-2 one: ~1.6 GB of weights and optimizer state)
    wings_rates: dict[str, dict[str, float]] = field(
        default_factory=lambda: {k: dict(v) for k, v in WINGS_RATES.items()}
    )
    llava_rates: dict[str, dict[str, float]] = field(
        default_factory=lambda: {k: dict(v) for k, v in LLAVA_RATES.items()}
    )
    vqa_limit: int | None = 500  # easy-vqa test questions scored, a seeded sample (None: all 9,673)
    swap_limit: int | None = 200  # of those, asked again about another image (the image-swap column)
    retention_limit: int | None = None  # retention_mc questions and retention_lm prompts (None: all)
    attention_samples: int = 8  # easy-vqa test conversations for the attention shift
    eval_batch_size: int = 64  # larger CPU matrix products: multiple choice ~1.4x faster than at 16
    # The base LLM's scores and reference continuations, kept between runs (None: always recomputed).
    eval_cache: Path | None = field(default_factory=lambda: cache_dir() / "eval")
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
        values = dict(
            out=Path("runs/demo-quick"),
            batch_size=4,
            align_steps=12,
            instruct_steps=2,
            save_steps=1000,
            vqa_limit=48,
            retention_limit=16,
            attention_samples=4,
        )
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
                runs.append(
                    ModelRun(
                        f"{run.name}{SEED_TAG}{seed}]",
                        (run.align[0], run.align[1] + tag, run.align[2]),
                        (run.instruct[0], run.instruct[1] + tag, run.instruct[2]),
                        seed,
                    )
                )
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
        ModelRun(
            "LLaVA",
            ("llava-align", "llava-align", llava["llava-align"]),
            ("llava-instruct", "llava-instruct", llava["llava-instruct"]),
        ),
        ModelRun(
            "LLaVA (WINGS LR)",
            ("llava-align", align_folder, matched_align),
            ("llava-instruct", "llava-matched-instruct", matched_instruct),
        ),
    ]
    if settings.ablations:
        visual = {
            group: rate for group, rate in wings["instruct"].items() if group not in ("textual_learners", "routers")
        }
        runs.append(
            ModelRun(
                "visual learner only",
                ("align", "wings-align", wings["align"]),
                ("instruct-visual", "visual-instruct", visual),
            )
        )
    return runs


def settings_dict(settings: DemoSettings) -> dict[str, Any]:
    """The settings as JSON values (paths as strings), for `results.json`."""
    values = asdict(settings)
    return {key: str(value) if isinstance(value, Path) else value for key, value in values.items()}
