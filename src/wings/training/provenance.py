"""Provenance records: what a checkpoint was made from (models, data, config, code, the stage chain)."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import time
from functools import cache
from pathlib import Path
from typing import Any

import torch
import transformers

import wings

from .trainer import PROVENANCE_FILE

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "config.json", "tokenizer.json")


@cache
def _sha256(path: str, size: int, mtime: float) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (cached per path, size and modification time)."""
    stat = Path(path).stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime)


def model_fingerprint(name: str | None, directory: str | Path | None) -> dict[str, Any]:
    """A model's name and the hashes of its weight and config files (when they are local)."""
    record: dict[str, Any] = {"name": name}
    if directory is not None and Path(directory).is_dir():
        files = sorted({p for pattern in WEIGHT_PATTERNS for p in Path(directory).glob(pattern)})
        record["files"] = {p.name: file_sha256(p) for p in files}
    return record


def code_version() -> dict[str, Any]:
    """The wings version (and git commit when run from a checkout), with the main libraries' versions."""
    record: dict[str, Any] = {
        "wings": wings.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    source = Path(wings.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=source,
                capture_output=True,
                text=True,
                timeout=5,
            )
            record["git_commit"] = commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return record


def data_fingerprint(sources: list[dict[str, Any]], dataset: Any) -> list[dict[str, Any]]:
    """Each data file with its hash, record count, what was used, skipped and dropped (counts and record indices).

    At the start of a run this holds what the checks before training found; `add_data_events` adds what
    loading met later (unreadable images, samples with nothing left after truncation)."""
    records = []
    parts = getattr(dataset, "datasets", [dataset])
    for source, part in zip(sources, parts):
        records.append(
            {
                "path": source["path"],
                "image_folder": source.get("image_folder"),
                "ratio": source.get("ratio", 1.0),
                "sha256": file_sha256(source["path"]),
                "records": len(part.records),
                "used": len(part),
                "skipped": dict(part.skipped),
                "dropped": dict(part.dropped),
                "skipped_records": {reason: sorted(set(indices)) for reason, indices in part.skipped_records.items()},
                "dropped_records": {reason: sorted(set(indices)) for reason, indices in part.dropped_records.items()},
            }
        )
    return records


def add_data_events(data: list[dict[str, Any]], events: dict[str, dict[str, dict[str, list[int]]]]) -> None:
    """Merge skips and drops logged while loading (`wings.data.dataset.read_data_events`) into `data_fingerprint`
    records: record indices per reason, counts of distinct records, and `used` = records never skipped or dropped."""
    for entry in data:
        logged = events.get(entry["path"], {})
        for what in ("skipped", "dropped"):
            merged = {reason: set(indices) for reason, indices in entry.get(f"{what}_records", {}).items()}
            for reason, indices in logged.get(what, {}).items():
                merged.setdefault(reason, set()).update(indices)
            entry[f"{what}_records"] = {reason: sorted(indices) for reason, indices in merged.items()}
            entry[what] = {reason: len(indices) for reason, indices in merged.items()}
        excluded = {
            index
            for what in ("skipped", "dropped")
            for indices in entry[f"{what}_records"].values()
            for index in indices
        }
        entry["used"] = entry["records"] - len(excluded)


def read_provenance(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def stage_record(
    stage: str,
    config: dict[str, Any],
    models: dict[str, Any],
    data: list[dict[str, Any]],
    init_from: str | None,
    command: str,
    world_size: int,
) -> dict[str, Any]:
    """The provenance of one stage, chained after the provenance of the checkpoint it started from."""
    previous = read_provenance(init_from) if init_from else None
    chain = list(previous.get("stage_chain", [])) if previous else []
    chain.append({"stage": stage, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "init_from": init_from})
    return {
        "stage": stage,
        "stage_chain": chain,
        "models": models,
        "data": data,
        "config": config,
        "code": code_version(),
        "command": command,
        "world_size": world_size,
        "previous": {k: previous.get(k) for k in ("stage", "models", "data", "metrics")} if previous else None,
    }
