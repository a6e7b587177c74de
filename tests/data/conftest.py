"""Fixtures for the data tests (`shared_data` comes from tests/conftest.py)."""

from __future__ import annotations

import pytest

from tests.fixtures.tokenizers import build_processor


@pytest.fixture(params=["chatml", "llama3"])
def processor(request):
    """A WingsProcessor (16 visual tokens per image) on each chat template family."""
    return build_processor(request.param)


@pytest.fixture
def chatml_processor():
    return build_processor("chatml")
