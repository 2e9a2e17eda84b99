"""The embedded model finds a pass key hidden in twice its trained context (slow)."""

from __future__ import annotations

import logging
import random

import pytest

from qllm_core import QLLMEngine

logger = logging.getLogger(__name__)

FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
TARGET_TOKENS = 17_500  # over twice the 8K that SmolLM2-135M was trained on


@pytest.fixture(scope="module")
def engine() -> QLLMEngine:
    return QLLMEngine.from_pretrained(progress=False)


def _passkey_document(engine: QLLMEngine, depth: float, seed: int) -> tuple[str, str]:
    key = str(random.Random(seed).randint(10_000, 99_999))
    repeats = TARGET_TOKENS // engine.count_tokens(FILLER)
    parts = [FILLER] * repeats
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    parts.insert(int(repeats * depth), needle)
    intro = (
        "There is an important info hidden inside a lot of irrelevant text. "
        "Find it and memorize it. "
    )
    return intro + "".join(parts), key


@pytest.mark.slow
def test_qllm_finds_a_passkey_in_twice_the_trained_context(engine, record_property):
    document, key = _passkey_document(engine, depth=0.5, seed=0)
    answer = engine.answer(document, "What is the pass key?", max_new_tokens=12)
    stats = answer.stats
    record_property("qllm_answer", answer.text)
    logger.warning(
        "qllm: %r, %d tokens read in %.1f s", answer.text, stats.tokens_read, stats.prefill_seconds
    )
    assert stats.tokens_read > 2 * 8192
    assert key in answer.text
    # the evidence points at the block holding the key
    key_at = document.index(key)
    top = stats.retrieved_blocks[:3]
    assert any(b.char_start <= key_at < b.char_end for b in top if b.char_start is not None)
