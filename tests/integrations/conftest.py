"""Fixtures of the integration tests: a fake engine, and a real engine on a tiny model."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import FakeEngine, tiny_engine


@pytest.fixture
def fake_engine() -> FakeEngine:
    """A fresh fake engine (no torch, deterministic answers)."""
    return FakeEngine()


@pytest.fixture(scope="session")
def real_tiny_engine() -> Any:
    """The tiny real engine."""
    return tiny_engine()
