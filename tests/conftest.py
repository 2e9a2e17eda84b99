"""Shared fixtures (the tiny models themselves are in ``tiny_models.py``)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the Triton kernels' tests run in Triton's interpreter. It must be chosen
    # before triton is first imported (which transformers does), as triton's own library
    # functions are wrapped then.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tiny_models import TINY_ENGINE_CONFIG, make_tiny_model  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded SmolLM2 model's tokenizer (vocab 49152)."""
    from qllm_core.models.loading import load_tokenizer

    return load_tokenizer()


@pytest.fixture
def tiny_engine(tokenizer):
    """A QLLMEngine over a tiny random Llama sharing the embedded model's tokenizer."""
    from qllm_core import QLLMEngine

    model = make_tiny_model("llama", vocab_size=len(tokenizer))
    return QLLMEngine(model, tokenizer, config=TINY_ENGINE_CONFIG, progress=False)
