"""Fixtures shared by the stream engine's tests."""

from __future__ import annotations

import pytest

from model import checkpoint
from model.checkpoint import LoadedModel


@pytest.fixture(scope="module")
def stocks() -> LoadedModel:
    """The bundled `stocks` model, loaded once per test module."""
    return checkpoint.load("model/bundled/stocks")
