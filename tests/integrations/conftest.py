"""Fixtures of the integration tests: a fake engine, and a real engine on a tiny model."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import FakeEngine, engine_available, tiny_engine


@pytest.fixture
def fake_engine() -> FakeEngine:
    """A fresh fake engine (no torch, deterministic answers)."""
    return FakeEngine()


@pytest.fixture(scope="session")
def real_tiny_engine() -> Any:
    """The tiny real engine; skips when the engine cannot be imported yet."""
    if not engine_available():
        pytest.skip("qllm_core.engine.QLLMEngine is not importable")
    return tiny_engine()
