"""A tiny WINGS checkpoint (model + processor saved in one folder) and an engine on it, built once per session."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import Qwen2Config, SiglipVisionConfig

from tests.data.chat_tokenizers import build_processor


def tiny_checkpoint(folder: Path) -> Path:
    """Save a random tiny WINGS model and a ChatML processor whose vocabularies agree (4 visual tokens per image)."""
    from wings import WingsConfig, WingsForConditionalGeneration

    processor = build_processor("chatml", image_size=16, patch_size=8)
    text_config = Qwen2Config(
        vocab_size=len(processor.tokenizer),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
    )
    vision_config = SiglipVisionConfig(
        hidden_size=24, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=8
    )
    torch.manual_seed(0)
    config = WingsConfig(text_config=text_config, vision_config=vision_config, image_token_id=processor.image_token_id)
    model = WingsForConditionalGeneration(config).eval()
    with torch.no_grad():  # learners start as no-ops; give them values so the image path matters
        for parameter in model.wings_layers.parameters():
            parameter.normal_(0, 0.3)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny-wings"))


@pytest.fixture(scope="session")
def engine(checkpoint):
    from wings.serving.engine import GenerationEngine

    return GenerationEngine.from_checkpoint(checkpoint, device="cpu", dtype="float32")


def png_bytes(color=(200, 30, 30), size=(20, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_file(tmp_path) -> Path:
    path = tmp_path / "red.png"
    path.write_bytes(png_bytes())
    return path


def wait_until(condition, checks: int = 6000) -> bool:
    """Poll `condition` up to `checks` times, 5 ms apart (a hang guard; tests assert counts, never durations)."""
    import time

    for _ in range(checks):
        if condition():
            return True
        time.sleep(0.005)
    return condition()


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


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serving(app):
    """Run `app` with uvicorn on a free loopback port; yields the port."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(2000):  # bounded wait for the socket to open
        if server.started:
            break
        time.sleep(0.01)
    assert server.started, "the test server did not start"
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
