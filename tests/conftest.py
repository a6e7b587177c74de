"""Test-wide settings and fixtures: never reach the network; the shared real data when it is there; a tiny saved LLM."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from tests.fixtures.models import text_config  # noqa: E402
from tests.fixtures.tokenizers import build_tokenizer  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def shared_data() -> Path:
    """The real public data sets beside the project; skipped (with the reason) on a user's fresh clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder ../shared/data is absent ({SHARED_DATA})")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2-shaped LLM saved with a ChatML tokenizer (room in its vocabulary for <image>)."""
    directory = tmp_path_factory.mktemp("tiny-llm")
    tokenizer = build_tokenizer("chatml")
    torch.manual_seed(0)
    config = text_config("qwen2")
    config.vocab_size = len(tokenizer) + 8  # room for the added <image> placeholder token
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
