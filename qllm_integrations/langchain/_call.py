"""One resolved request to the engine, shared by ``ChatQLLM`` and ``QLLM``.

A :class:`EngineCall` knows which engine to use, what to feed it (a document/question
split, or token ids for short prompts) and how to report the result back to LangChain
(``response_metadata``, ``usage_metadata``). :func:`astream_in_thread` runs the blocking
engine in a worker thread and hands its pieces to the event loop through a queue.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from langchain_core.messages.ai import UsageMetadata

from qllm_core.results import Answer, AnswerStream
from qllm_integrations._async import iterate_in_thread
from qllm_integrations.split import PromptSplit

logger = logging.getLogger(__name__)

PROVIDER = "quickllama"
"""``ls_provider`` and ``model_provider`` of every quickllama LangChain model."""

DIRECT_ROUTE = "direct"
"""Route of prompts short enough to fit the local window: no split is needed, since
Q-LLM then attends to every token exactly like the model's own attention."""

CALL_KWARGS = frozenset(
    {
        "question",
        "document",
        "model",
        "max_tokens",
        "max_new_tokens",
        "temperature",
        "top_p",
        "seed",
        "mode",
        "response_format",
    }
)
"""Keyword arguments accepted by ``invoke``/``stream``/``bind`` besides ``stop``."""


@dataclass(frozen=True)
class EngineCall:
    """A request ready to run: the engine, its input and its decoding options."""

    engine: Any
    """The ``QLLMEngine`` (or an object with the same API) that serves the request."""
    model_name: str
    """Reported as ``response_metadata["model_name"]``."""
    route: str
    """How the question was found: a :data:`~qllm_integrations.split.Route` or ``direct``."""
    split: PromptSplit | None
    """Document and question for ``engine.stream``; ``None`` on the direct route."""
    input_ids: list[int] | None
    """Token ids for ``engine.stream_ids`` on the direct route."""
    options: dict[str, Any]
    """``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``, ``mode``."""

    def start(self) -> AnswerStream:
        """Start the request; iterating the result generates the answer."""
        if self.split is not None:
            logger.debug(
                "route %s: %d document chars, question %r",
                self.route,
                len(self.split.document),
                self.split.question[:80],
            )
            return self.engine.stream(self.split.document, self.split.question, **self.options)
        assert self.input_ids is not None
        return self.engine.stream_ids(self.input_ids, **self.options)

    def run(self) -> Answer:
        """Run the request to its end."""
        stream = self.start()
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def response_metadata(self, answer: Answer) -> dict[str, Any]:
        """Model, finish reason, split route and the engine's stats, JSON-serializable."""
        stats = answer.stats
        return {
            "model_name": self.model_name,
            "model_provider": PROVIDER,
            "finish_reason": answer.finish_reason,
            "split_route": self.route,
            "qllm": {
                "mode": stats.mode,
                "tokens_read": stats.tokens_read,
                "tokens_generated": stats.tokens_generated,
                "prefill_seconds": stats.prefill_seconds,
                "decode_seconds": stats.decode_seconds,
                "seconds": stats.prefill_seconds + stats.decode_seconds,
                "question_found": stats.question_found,
                "retrieved_blocks": [
                    {
                        "token_start": b.token_start,
                        "token_end": b.token_end,
                        "count": b.count,
                        "char_start": b.char_start,
                        "char_end": b.char_end,
                    }
                    for b in stats.retrieved_blocks
                ],
            },
        }


def usage_metadata(answer: Answer) -> UsageMetadata:
    """Prompt tokens read and tokens generated, as LangChain's ``UsageMetadata``."""
    read, generated = answer.stats.tokens_read, answer.stats.tokens_generated
    return UsageMetadata(input_tokens=read, output_tokens=generated, total_tokens=read + generated)


def json_instruction(response_format: dict[str, Any] | None) -> str:
    """The text asking for JSON, appended to the question (empty when not asked)."""
    if not response_format:
        return ""
    schema = response_format.get("schema")
    if schema is None:
        return "Reply with a single valid JSON object and nothing else."
    return (
        "Reply with a single JSON object and nothing else. It must conform to this "
        f"JSON schema:\n{json.dumps(schema, ensure_ascii=False)}"
    )


async def astream_in_thread(start: Callable[[], AnswerStream]) -> AsyncIterator[str | Answer]:
    """Run ``start()`` and its iteration in a worker thread; yield its pieces, then the Answer.

    The event loop never blocks on the engine (see
    :func:`~qllm_integrations._async.iterate_in_thread`); when the consumer stops early, the
    engine's generator is closed and the engine released.
    """

    def pieces_then_answer() -> Iterator[str | Answer]:
        stream = start()
        yield from stream
        assert stream.result is not None
        yield stream.result

    async for item in iterate_in_thread(pieces_then_answer):
        yield item
