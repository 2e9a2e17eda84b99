"""Fixtures for the LlamaIndex provider: a fake engine, a tiny random engine, clean Settings."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")

from fakes import FakeEngine  # noqa: E402  (tests/integrations/fakes.py)
from fakes import tiny_engine as shared_tiny_engine  # noqa: E402
from llama_index.core import Settings  # noqa: E402

from qllm_integrations.llamaindex import QLLM  # noqa: E402


@pytest.fixture(autouse=True)
def clean_settings():
    """Every test starts and ends with LlamaIndex's global Settings unset."""
    saved = Settings._llm, Settings._prompt_helper, Settings._chat_prompt_helper
    Settings._llm = Settings._prompt_helper = Settings._chat_prompt_helper = None
    yield Settings
    Settings._llm, Settings._prompt_helper, Settings._chat_prompt_helper = saved


@pytest.fixture
def make_engine():
    """The FakeEngine class, to build fakes with other replies or delays."""
    return FakeEngine


@pytest.fixture
def fake_engine():
    return FakeEngine()


@pytest.fixture
def llm(fake_engine):
    return QLLM(engine=fake_engine)


@pytest.fixture(scope="session")
def tiny_engine():
    """A real QLLMEngine on a random 2-layer Llama with the embedded model's tokenizer.

    The shared one from ``fakes.tiny_engine`` (n_init=4, n_local=64, block_size=16, topk=2,
    repr_topk=2, exec_block_size=32, max_cached_blocks=4), built once per process.
    """
    return shared_tiny_engine()
