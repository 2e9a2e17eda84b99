"""The systems under test: the engine in each mode, and chunk-and-embed RAG.

Every system answers the same :class:`~benchmarks.tasks.Sample` through the same engine
prompt; only what the model gets to read differs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from .scoring import overlaps
from .tasks import Sample

ENGINE_MODES: tuple[str, ...] = ("qllm", "infllm", "streaming", "full")


@dataclass(frozen=True)
class SystemAnswer:
    """What a system said and what it cost."""

    text: str
    finish_reason: str
    tokens_generated: int
    tokens_read: int
    """Prompt tokens the LLM read (for RAG: the retrieved context's prompt)."""
    prefill_seconds: float
    decode_seconds: float
    total_seconds: float
    """Wall time of the whole request, including RAG indexing and retrieval."""
    question_found: bool | None
    evidence_rank: int | None
    """Rank (0 = first) of the first retrieved memory block that overlaps a planted fact, or
    RAG chunk that contains one; ``None`` when none was retrieved."""
    extra: dict[str, Any] = field(default_factory=dict)


class System(Protocol):
    """Something that answers a sample's question about its document."""

    name: str

    def answer(self, sample: Sample) -> SystemAnswer:
        """Answer ``sample.question`` about ``sample.document``."""
        ...


class EngineSystem:
    """The quickllama engine in one mode (``qllm``, ``infllm``, ``streaming``, ``full``).

    ``read_once``: read the document into a memory first (``engine.read``, question-free),
    then answer from it, as every later question would; the record's ``extra`` holds the
    read's and the answer's seconds apart.
    """

    def __init__(
        self, engine: Any, mode: str, name: str | None = None, *, read_once: bool = False
    ) -> None:
        self.engine = engine
        self.mode = mode
        self.name = name or mode
        self.read_once = read_once

    def answer(self, sample: Sample) -> SystemAnswer:
        """Run the engine on the sample's document and question."""
        started = time.perf_counter()
        extra: dict[str, Any] = {}
        if self.read_once:
            memory = self.engine.read(sample.document, mode=self.mode)
            result = self.engine.answer(
                memory, sample.question, max_new_tokens=sample.max_new_tokens
            )
            answered = result.stats.prefill_seconds + result.stats.decode_seconds
            extra = {"read_seconds": memory.read_seconds, "answer_seconds": answered}
        else:
            result = self.engine.answer(
                sample.document,
                sample.question,
                mode=self.mode,
                max_new_tokens=sample.max_new_tokens,
            )
        total = time.perf_counter() - started
        stats = result.stats
        rank = next(
            (
                i
                for i, block in enumerate(stats.retrieved_blocks)
                if any(overlaps(span, block.char_start, block.char_end) for span in sample.evidence)
            ),
            None,
        )
        return SystemAnswer(
            text=result.text,
            finish_reason=result.finish_reason,
            tokens_generated=stats.tokens_generated,
            tokens_read=stats.tokens_read + stats.memory_tokens,
            prefill_seconds=stats.prefill_seconds + extra.get("read_seconds", 0.0),
            decode_seconds=stats.decode_seconds,
            total_seconds=total,
            question_found=stats.question_found,
            evidence_rank=rank,
            extra={"retrieved_blocks": len(stats.retrieved_blocks), **extra},
        )


def engine_with(engine: Any, **changes: Any) -> Any:
    """A second engine on the same loaded model, with config fields changed."""
    return type(engine)(engine.model, engine.tokenizer, config=engine.config.replace(**changes))
