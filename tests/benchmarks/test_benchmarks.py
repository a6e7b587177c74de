"""The benchmark scripts (no timing assertions: a benchmark is not a test): the emulated authors' router computes
what ours computes, the memory probe sees an allocation, and a quick run prints its tables."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.__main__ import main
from benchmarks.common import build_model, configure_malloc, make_batch, peak_memory
from benchmarks.training_step import use_authors_router


def randomize_learners(model, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.wings_layers.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


def test_authors_router_emulation_gives_our_router_inputs_and_outputs():
    ours = build_model("tiny", "wings").eval()
    randomize_learners(ours)
    theirs = build_model("tiny", "wings").eval()
    theirs.load_state_dict(ours.state_dict())
    use_authors_router(theirs)
    batch = make_batch(ours, 48)
    batch.pop("labels")
    with torch.no_grad():
        expected = ours(**batch, use_cache=False).logits
        actual = theirs(**batch, use_cache=False).logits
    assert theirs.language_model.config._attn_implementation == "wings_authors_eager"
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists() or torch.cuda.is_available(), reason="Linux CPU probe")
def test_peak_memory_sees_a_64_mib_tensor_and_not_one_freed_before():
    configure_malloc()
    held = torch.ones(16 * 2**20)  # allocated and freed before the call: not part of its peak
    del held
    peak = peak_memory(lambda: torch.ones(16 * 2**20).sum())
    assert 60 <= peak <= 100


def test_quick_run_prints_its_tables(capsys):
    threads = torch.get_num_threads()
    try:
        main(["--quick", "--only", "lm_head", "--threads", str(threads)])
    finally:
        torch.set_num_threads(threads)
    output = capsys.readouterr().out
    titles = [line for line in output.splitlines() if line.startswith("### ")]
    assert titles == ["### LM head at labelled positions against the full head (WINGS instruct step, 128 tokens)"]
    assert "| 25% |" in output and "| 50% |" in output and output.startswith("Machine: ")
