"""The base LLM's evaluation results kept on disk between runs.

Every comparison scores the same base LLM on the same tasks; its scores and its reference continuations
(`retention_lm`) depend only on its weights, its tokenizer, the documents and the settings. They are stored
under a key that hashes all of these, so a changed model, task file or setting is simply a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch


def model_fingerprint(model: Any, tokenizer: Any) -> str:
    """A hash of the model's config, its tokenizer and the bytes of every parameter and buffer (~1 s for 135M)."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    digest.update((config.to_json_string() if config is not None else type(model).__name__).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    digest.update(vocabulary.encode())
    digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
    for name, tensor in list(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()


class BaseResultCache:
    """JSON results of the base LLM under `folder`, keyed by its fingerprint and what was computed."""

    def __init__(self, folder: str | os.PathLike, model: Any, tokenizer: Any) -> None:
        self.folder = Path(folder)
        self.model, self.tokenizer = model, tokenizer
        self._fingerprint: str | None = None

    def _path(self, kind: str, payload: Any) -> Path:
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.model, self.tokenizer)
        text = json.dumps([self._fingerprint, kind, payload], sort_keys=True, default=str)
        return self.folder / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}.json"

    def get(self, kind: str, payload: Any) -> Any | None:
        """The stored value, or None when this exact computation was never stored."""
        path = self._path(kind, payload)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())["value"]
        except (json.JSONDecodeError, KeyError):  # a torn write: compute again
            return None

    def put(self, kind: str, payload: Any, value: Any) -> None:
        path = self._path(kind, payload)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(f".tmp{os.getpid()}")
        staging.write_text(json.dumps({"kind": kind, "value": value}))
        staging.replace(path)  # atomic: a concurrent reader sees the old file or the new one

    def fetch(self, kind: str, payload: Any, compute: Any) -> Any:
        """The stored value, else `compute()` stored and returned."""
        value = self.get(kind, payload)
        if value is None:
            value = compute()
            self.put(kind, payload, value)
        return value
