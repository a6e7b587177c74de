"""Two processes on CPU (gloo) through torchrun: one rank gets an image batch while the other gets a text-only
batch, with DDP told that every parameter is used, and under DeepSpeed ZeRO-2 and ZeRO-3; running the visual
modules with zero weight on text-only batches keeps the ranks in step."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from wings import WingsForConditionalGeneration

from .conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# A hang guard, not a time limit: the run is stopped only after this long without any progress (no new output, no
# file written), which a busy machine slows but never stops; plus a cap that keeps a broken run from holding CI.
IDLE_LIMIT_S = 900
HARD_LIMIT_S = 3 * 3600


def _progress(log: Path, output_dir: Path) -> tuple:
    files = [log, *output_dir.rglob("*")] if output_dir.is_dir() else [log]
    return tuple(sorted((str(path), path.stat().st_size) for path in files if path.exists()))


def run_watched(command: list[str], env: dict, log: Path, output_dir: Path) -> tuple[int, str]:
    """Run `command` (its output to `log`); kill its process group only when it stops making progress."""
    with open(log, "w") as sink:
        process = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
        )
    started = last_change = time.monotonic()
    seen = None
    while process.poll() is None:
        time.sleep(1)
        now, state = time.monotonic(), _progress(log, output_dir)
        if state != seen:
            seen, last_change = state, now
        if now - last_change > IDLE_LIMIT_S or now - started > HARD_LIMIT_S:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(
                f"no progress for {now - last_change:.0f} s (or over {HARD_LIMIT_S} s in all): killed\n"
                + log.read_text()[-6000:]
            )
    return process.returncode, log.read_text()


def run_two_processes(tmp_path: Path, raw: dict, launcher: list[str] | None = None) -> dict:
    raw["data"]["group_by_length"] = False  # sequential order: rank 0 reads images, rank 1 text-only records
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    launcher = launcher or [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    port = "--main_process_port" if "accelerate" in " ".join(launcher) else "--master_port"
    command = [*launcher, port, str(free_port()), "-m", "wings.cli", "train", "--config", str(config)]
    returncode, output = run_watched(command, env, tmp_path / "log.txt", Path(raw["training"]["output_dir"]))
    assert returncode == 0, output[-6000:]
    record = json.loads((Path(raw["training"]["output_dir"]) / "provenance.json").read_text())
    assert record["world_size"] == 2 and record["global_step"] == 2 and record["status"] == "complete"
    return record


def test_ddp_two_processes_with_mixed_image_and_text_batches(tiny_llm_dir, tiny_data, tmp_path):
    raw = tiny_config(
        tiny_llm_dir,
        tiny_data,
        tmp_path / "out",
        "instruct",
        per_device_train_batch_size=1,
        train_sampling_strategy="sequential",
        ddp_find_unused_parameters=False,
        ddp_backend="gloo",
    )
    assert run_two_processes(tmp_path, raw)["distributed"] == "MULTI_CPU"


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
@pytest.mark.parametrize("zero", [2, 3])
def test_deepspeed_zero_on_cpu_with_mixed_batches(tiny_llm_dir, tiny_data, tmp_path, zero):
    deepspeed_config = json.loads((REPO / "configs" / "deepspeed" / f"zero{zero}.json").read_text())
    if zero == 3:  # partition every parameter, however small (the tiny model's would all stay whole by default)
        deepspeed_config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "deepspeed.json").write_text(json.dumps(deepspeed_config))
    raw = tiny_config(
        tiny_llm_dir,
        tiny_data,
        tmp_path / "out",
        "instruct",
        per_device_train_batch_size=1,
        train_sampling_strategy="sequential",
        ddp_backend="gloo",
        deepspeed=str(tmp_path / "deepspeed.json"),
    )
    assert run_two_processes(tmp_path, raw)["distributed"] == "DEEPSPEED"
    model = WingsForConditionalGeneration.from_pretrained(tmp_path / "out")  # gathered weights, loadable
    assert all(parameter.numel() for parameter in model.parameters())
