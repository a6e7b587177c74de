"""The training stages of WINGS.md's table, and the LLaVA-style baseline's, as data.

Each stage says which learner mode the model runs in, which parameter groups train, and the default learning
rate of each group (the authors' released values). `prepare_model_for_stage` applies it to a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wings.model.modeling_wings import PARAMETER_GROUPS, WingsForConditionalGeneration


@dataclass(frozen=True)
class Stage:
    """One training stage: the learner mode, the trained groups and their default learning rates."""

    name: str
    learners: str  # WingsConfig.learners while training this stage
    learning_rates: dict[str, float] = field(default_factory=dict)  # group -> lr; the groups that train
    description: str = ""

    @property
    def trainable_groups(self) -> tuple[str, ...]:
        return tuple(self.learning_rates)


STAGES: dict[str, Stage] = {
    "align": Stage(
        "align",
        "visual",
        {"projector": 2e-5, "visual_learners": 2e-5},
        "stage 1: projector + visual learners on image-caption pairs; LLM frozen; h' = h + a + L_v",
    ),
    "instruct": Stage(
        "instruct",
        "wings",
        {"projector": 1e-5, "visual_learners": 2e-6, "textual_learners": 2e-6, "routers": 2e-6, "llm": 2e-6},
        "stage 2: LLM + both learners + routers + projector on conversations; vision tower frozen",
    ),
    # The paper's ablation "visual learner alone": stage 2 keeps align's learner mode (no textual learner, no router).
    "instruct-visual": Stage(
        "instruct-visual",
        "visual",
        {"projector": 1e-5, "visual_learners": 2e-6, "llm": 2e-6},
        "ablation stage 2: LLM + visual learners + projector; no textual learner, no router (h' = h + a + L_v)",
    ),
    "llava-align": Stage("llava-align", "none", {"projector": 1e-3}, "LLaVA-style stage 1: the projector alone"),
    "llava-instruct": Stage(
        "llava-instruct", "none", {"projector": 2e-5, "llm": 2e-5}, "LLaVA-style stage 2: LLM + projector"
    ),
}


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; choose one of {', '.join(STAGES)}")
    return STAGES[name]


def prepare_model_for_stage(
    model: WingsForConditionalGeneration, stage: Stage, train_vision_tower: bool = False
) -> dict[str, float]:
    """Freeze everything but the stage's groups (plus the vision tower when it is trained from scratch).

    Returns the learning rate of each trained group. The model must already run in `stage.learners` mode
    (load it with `from_pretrained(path, learners=stage.learners)`).
    """
    if model.config.learners != stage.learners:
        raise ValueError(
            f"stage {stage.name!r} trains a model with learners={stage.learners!r}, this one has "
            f"learners={model.config.learners!r}: load it with from_pretrained(path, learners={stage.learners!r})"
        )
    rates = dict(stage.learning_rates)
    if train_vision_tower:
        rates["vision_tower"] = rates.get("projector", max(rates.values()))
    groups = model.parameter_groups()
    for group in PARAMETER_GROUPS:
        for _, parameter in groups[group]:
            parameter.requires_grad_(group in rates)
    empty = [group for group in rates if not groups[group]]
    if empty:
        raise ValueError(f"stage {stage.name!r} trains {empty}, which this model does not have")
    return rates
