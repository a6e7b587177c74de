"""A tiny WINGS checkpoint (model + processor saved in one folder) and an engine on it, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.models import tiny_checkpoint
from tests.fixtures.serving import png_bytes


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny-wings"))


@pytest.fixture(scope="session")
def engine(checkpoint):
    from wings.serving.engine import GenerationEngine

    return GenerationEngine.from_checkpoint(checkpoint, device="cpu", dtype="float32")


@pytest.fixture
def image_file(tmp_path) -> Path:
    path = tmp_path / "red.png"
    path.write_bytes(png_bytes())
    return path


class StepGate:
    """Lets the model run only as many forward passes (one per decoding step) as the test releases."""

    def __init__(self, model, monkeypatch):
        import threading

        self.permits = threading.Semaphore(0)
        original = model.forward

        def forward(*args, **kwargs):
            if not self.permits.acquire(timeout=300):  # a hang guard only: a test always releases its steps
                raise RuntimeError("step gate never opened")
            return original(*args, **kwargs)

        monkeypatch.setattr(model, "forward", forward)

    def release(self, steps: int = 1) -> None:
        self.permits.release(steps)


@pytest.fixture
def gate(engine, monkeypatch):
    """A `StepGate` on the engine's model, with eos disabled so that only the gate, a stop or a cancel ends a run."""
    gate = StepGate(engine.model, monkeypatch)
    monkeypatch.setattr(engine, "eos_token_ids", [])
    yield gate
    gate.release(10_000)  # whatever is still running finishes
