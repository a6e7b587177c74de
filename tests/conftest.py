"""Test-wide settings: never reach the network; find the shared real data when it is there."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def shared_data() -> Path:
    """The real public data sets beside the project; skipped (with the reason) on a user's fresh clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder ../shared/data is absent ({SHARED_DATA})")
    return SHARED_DATA
