"""Loading a WINGS checkpoint saved without its frozen LLM (a stage-1 checkpoint): time and peak resident memory
against the base LLM's own `from_pretrained`, and against the former way (the whole LLM initialised randomly by
the generic loader, then the base weights copied in).

    python -m benchmarks --only loading [--quick]

Every load runs in a fresh process (`python -m benchmarks.loading --measure WHAT DIR`), so its peak RSS is its
own; the figure is the peak above the process's resident memory once torch and transformers are imported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import Table, fmt, target_cell

WHAT = {
    "base": "base LLM alone: AutoModelForCausalLM.from_pretrained",
    "wings": "WINGS, LLM left out: from_pretrained (LLM loaded first, the rest on the meta device)",
    "former": "WINGS, LLM left out, the former way (LLM initialised randomly, then the base weights copied in)",
}


def write_checkpoint(directory: Path, quick: bool) -> tuple[str, str]:
    """(the LLM's directory, a WINGS checkpoint without the LLM's weights that points at it)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from wings.model.modeling_wings import WingsForConditionalGeneration
    from wings.model.registry import DEMO_LLM, resolve_llm
    from wings.model.vision_towers import load_vision_tower

    if quick:
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
        llm_directory = str(directory / "llm")
        AutoModelForCausalLM.from_config(config).save_pretrained(llm_directory)
    else:
        llm_directory = resolve_llm(DEMO_LLM)  # SmolLM2-135M-Instruct, converted once from the packaged GGUF
    model = WingsForConditionalGeneration.from_llm_and_vision(llm_directory, load_vision_tower("siglip-scratch-64"))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("language_model.")}
    model.config.llm_checkpoint = llm_directory
    model.save_pretrained(directory / "wings", state_dict=state)
    return llm_directory, str(directory / "wings")


def load(what: str, directory: str) -> object:
    from transformers import AutoModelForCausalLM, PreTrainedModel

    from wings.model.modeling_wings import WingsForConditionalGeneration

    if what == "base":
        return AutoModelForCausalLM.from_pretrained(directory)
    if what == "wings":
        return WingsForConditionalGeneration.from_pretrained(directory)
    # The former way: transformers' generic loader finds every LLM weight "missing" and initialises it, then the
    # base LLM is loaded on its own and copied in.
    model = PreTrainedModel.from_pretrained.__func__(WingsForConditionalGeneration, directory)
    base = AutoModelForCausalLM.from_pretrained(model.config.llm_checkpoint, dtype=model.dtype)
    model.language_model.load_state_dict(base.state_dict())
    return model


def status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def measure(what: str, directory: str) -> dict[str, float]:
    """In this process: seconds until the model is loaded and every weight has been read once (safetensors are
    mapped lazily), and MiB of peak RSS above the process's memory before the load."""
    import torch
    import transformers

    import wings.model.modeling_wings  # noqa: F401

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets the peak-RSS counter (VmHWM) to the current RSS: import peaks do not count
    before = status_kib("VmRSS")
    start = time.perf_counter()
    model = load(what, directory)
    with torch.no_grad():
        sum(float(parameter.float().sum()) for parameter in model.parameters())  # every weight resident
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mib": (status_kib("VmHWM") - before) / 1024}


def in_fresh_process(what: str, directory: str) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.loading", "--measure", what, directory]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=3600)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def loading_table(quick: bool, repeats: int) -> Table:
    with tempfile.TemporaryDirectory() as scratch:
        llm_directory, wings_directory = write_checkpoint(Path(scratch), quick)
        directories = {"base": llm_directory, "wings": wings_directory, "former": wings_directory}
        runs: dict[str, list[dict[str, float]]] = {what: [] for what in WHAT}
        for _ in range(repeats):  # alternated; the fastest run of each (the machine is shared)
            for what in WHAT:
                runs[what].append(in_fresh_process(what, directories[what]))
    best = {what: min(records, key=lambda r: r["seconds"]) for what, records in runs.items()}
    base = best["base"]
    table = Table(
        "Loading a checkpoint saved without its frozen LLM, against the base LLM's own from_pretrained",
        ["load", "seconds", "peak RSS MiB", "time / base", "memory / base", "target (<= 1.1x both)"],
    )
    for what, description in WHAT.items():
        time_ratio, memory_ratio = best[what]["seconds"] / base["seconds"], best[what]["peak_mib"] / base["peak_mib"]
        table.rows.append(
            [
                description,
                fmt(best[what]["seconds"]),
                fmt(best[what]["peak_mib"], 0),
                fmt(time_ratio),
                fmt(memory_ratio),
                target_cell(time_ratio <= 1.1 and memory_ratio <= 1.1) if what == "wings" else "-",
            ]
        )
    model = "a random 4-layer Llama (d=64)" if quick else "SmolLM2-135M-Instruct (fp32, 135M parameters)"
    table.notes.append(
        f"LLM: {model}; the WINGS checkpoint adds siglip-scratch-64, the projector and the learners (saved, a few "
        f"MB). Each load in a fresh process, timed until every weight has been read once (safetensors are mapped "
        f"lazily); the fastest of {repeats} alternated runs; peak RSS above the process's memory before the load."
    )
    return table


def run(quick: bool = False, size: str | None = None) -> list[Table]:
    return [loading_table(quick, 1 if quick else 3)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--measure", nargs=2, metavar=("WHAT", "DIR"), required=True)
    arguments = parser.parse_args()
    print(json.dumps(measure(*arguments.measure)))
