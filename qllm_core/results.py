"""What the engine returns: the answer text, its stats and the evidence blocks."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "eos"]


@dataclass(frozen=True)
class RetrievedBlock:
    """A memory block that retrieval chose while the answer was produced.

    ``token_start``/``token_end`` index the prompt's token ids (end exclusive).
    ``char_start``/``char_end`` index the document string when the block lies in it
    (``None`` for blocks of the prompt template). ``count`` is how often the block was
    chosen, summed over layers and execution blocks.
    """

    token_start: int
    token_end: int
    count: int
    char_start: int | None = None
    char_end: int | None = None
    score: float = 0.0
    """Relevance to the question: the block's share of the question's attention over all
    memory blocks, averaged over layers (0 when the request had no question)."""


@dataclass(frozen=True)
class AnswerStats:
    """Counters and timings of one request."""

    mode: str
    tokens_read: int
    tokens_generated: int
    prefill_seconds: float
    decode_seconds: float
    question_found: bool
    retrieved_blocks: tuple[RetrievedBlock, ...] = ()
    """Blocks chosen while answering, most chosen first (with a re-read: its passages)."""
    reread_tokens: int = 0
    """Document tokens of the second, full-attention read (0: a single pass)."""

    @property
    def prefill_tokens_per_second(self) -> float:
        """Prompt tokens read per second of prefill."""
        return self.tokens_read / self.prefill_seconds if self.prefill_seconds > 0 else 0.0


@dataclass(frozen=True)
class Answer:
    """The engine's answer to one question."""

    text: str
    finish_reason: FinishReason
    stats: AnswerStats


@dataclass
class AnswerStream:
    """Iterate to receive the answer text piece by piece; ``result`` is set at the end."""

    pieces: Iterator[str]
    result: Answer | None = field(default=None)

    def __iter__(self) -> Iterator[str]:
        return self.pieces
