"""Warmup never spends an optimizer step at learning rate 0 (it was half of a two-step stage)."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback, get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from wings.training.arguments import build_config
from wings.training.run import run_stage
from wings.training.trainer import warmup_from_above_zero

from .conftest import tiny_config


@pytest.mark.parametrize("schedule", [get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup])
@pytest.mark.parametrize(("warmup", "steps"), [(1, 2), (3, 10), (5, 5)])
def test_warmup_starts_above_zero_rises_and_then_follows_the_schedule(schedule, warmup, steps):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    factor = schedule(optimizer, warmup, steps).lr_lambdas[0]
    assert factor(0) == 0.0  # transformers' own warmup: the first step would not move anything
    shifted = warmup_from_above_zero(factor, warmup)
    warm = [shifted(step) for step in range(warmup)]
    assert warm == [pytest.approx((step + 1) / (warmup + 1)) for step in range(warmup)]
    assert all(0 < a < b for a, b in zip(warm, warm[1:] + [1.0]))
    assert [shifted(step) for step in range(warmup, steps)] == [factor(step) for step in range(warmup, steps)]


class LearningRates(TrainerCallback):
    """The learning rate of every optimizer group at the start of each step (the rate that step uses)."""

    def __init__(self) -> None:
        self.per_step: list[list[float]] = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):  # noqa: ANN001 (Trainer's signature)
        self.per_step.append([group["lr"] for group in optimizer.param_groups])


def test_the_first_step_of_a_two_step_stage_with_the_default_warmup_trains(tiny_llm_dir, tiny_data, tmp_path):
    raw = tiny_config(tiny_llm_dir, tiny_data, tmp_path / "align", max_steps=2)
    del raw["training"]["warmup_steps"]  # the default: 3% of the run, one step here
    rates = LearningRates()
    run_stage(build_config(raw), callbacks=[rates])
    assert len(rates.per_step) == 2
    first, second = rates.per_step
    assert all(rate > 0 for rate in first) and first == pytest.approx([rate / 2 for rate in second])
