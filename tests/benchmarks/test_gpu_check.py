"""The one-shot GPU check (`python -m benchmarks.gpu`) in its tiny CPU mode: it writes one JSON file with every
section, and the numbers that do not depend on speed hold."""

from __future__ import annotations

import json

import torch

from benchmarks.gpu import main


def test_gpu_check_tiny_mode_writes_every_section(tmp_path):
    threads = torch.get_num_threads()
    try:
        main(["--tiny", "--out", str(tmp_path / "check.json")])
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["errors"] == {} and report["tiny"] is True
    backends = report["backends"]
    assert backends["backends"][:2] == ["eager", "sdpa"]
    # bf16: sdpa and eager agree to bf16 rounding of the logits; router weights (fp32 softmax) closer still
    assert (
        backends["sdpa vs eager"]["max |logit difference|"]
        <= 2e-2 * backends["sdpa vs eager"]["logit scale (max |logit|)"]
    )
    assert backends["sdpa vs eager"]["max |router weight difference|"] <= 2e-3
    generation = backends["cached vs recomputed generation"]
    assert generation["WINGS"]["tokens equal before the first difference"] == generation["WINGS"]["of"]
    rows = {(row["model"], row["checkpointing"]) for row in report["training"]}
    assert rows == {(m, c) for m in ("WINGS instruct", "LLaVA instruct") for c in (False, True)}
    assert all(row["tokens/s"] > 0 and row["model TFLOP per step"] > 0 for row in report["training"])
    generated = report["generation"]
    assert {"base LLM", "WINGS, full learner cache", "WINGS, compact learner cache"} <= generated.keys()
    assert generated["cache bytes, full form"]["LLM"] == generated["cache bytes, compact form"]["LLM"] > 0
    assert generated["learner_cache='auto' picks"] == "full"  # no CUDA here
    assert set(report["targets"]) == {
        "instruct step time / LLaVA",
        "share of bf16 matmul rate",
        "decode tokens/s / base LLM",
    }
