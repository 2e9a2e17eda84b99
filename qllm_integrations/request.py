"""The provider request: an engine call ready to run, and the metadata of its answer.

Both providers are translators. They turn their framework's messages into ``(role, text)``
turns (or take a plain prompt), ask :mod:`qllm_integrations.routing` for a
:class:`Request`, and turn its stream and :meth:`Request.metadata` back into framework
types.

**Read once.** With the setting ``read_once=True``, a split request reads its document
through the engine's memory cache (``engine.memory_for``): the first question about a
text reads it, question-free; later questions about the same text read only themselves,
on from that memory. The metadata says which (``memory_reused``).

This module imports neither LangChain nor LlamaIndex nor torch.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Generator, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final, Protocol

from qllm_core.progress import ProgressListener, report_progress
from qllm_core.protocol import EngineProtocol, MemoryProtocol, TextStream
from qllm_core.results import Answer, AnswerStats, RetrievedBlock
from qllm_integrations._async import cancel_with_consumer, iterate_in_thread, run_in_thread
from qllm_integrations.evidence import Evidence, collect_evidence, plain_text
from qllm_integrations.progress import ReportingStream
from qllm_integrations.split import PromptSplit

logger = logging.getLogger(__name__)

PROVIDER: Final = "quickllama"
"""``model_provider`` in every response's metadata."""


class ProviderRequest(Protocol):
    """What the providers do with a request, wherever its engine runs.

    :class:`Request` runs it on an engine in this process;
    :class:`~qllm_integrations.remote.RemoteRequest` sends it to a quickllama server. The
    providers see only this surface (:func:`qllm_integrations.routing.provider_request`
    picks the side), so they hold no engine- or HTTP-specific code.
    """

    @property
    def model_name(self) -> str:
        """Reported as ``model_name`` (LangChain's ``llm_output``)."""
        ...

    def start(self, listener: ProgressListener | None = None) -> TextStream:
        """Start it: a stream of text deltas; closing it stops the answer at once."""
        ...

    def run(self, listener: ProgressListener | None = None) -> Answer:
        """Run it to its end."""
        ...

    async def arun(self, listener: ProgressListener | None = None) -> Answer:
        """:meth:`run` without blocking the event loop."""
        ...

    def aevents(
        self, listener: ProgressListener | None = None
    ) -> AsyncGenerator[str | Answer, None]:
        """:func:`answer_events` without blocking the event loop: deltas, then the answer.

        Closing it (``aclose``, or leaving an ``async for`` early) stops the answer.
        """
        ...

    def metadata(self, answer: Answer) -> dict[str, Any]:
        """The provider metadata of ``answer`` (LangChain's ``response_metadata``)."""
        ...

    def cache_read_tokens(self, answer: Answer) -> int:
        """Input tokens taken from a memory that was there already."""
        ...


@dataclass
class MemoryUse:
    """The document memory a request answered from, and whether it was there already."""

    memory: MemoryProtocol | None = None
    reused: bool | None = None
    """``True``: taken from the engine's cache or given; ``False``: read for this request."""


@dataclass(frozen=True)
class Request:
    """A request ready to run: the engine, its input, its options and its route."""

    engine: EngineProtocol
    model_name: str
    """Reported as ``model_name`` in the metadata."""
    route: str
    """How the question was found: a :data:`~qllm_integrations.split.Route` or ``direct``."""
    options: Mapping[str, Any]
    """The engine's keyword arguments."""
    split: PromptSplit | None = None
    """Document and question for ``engine.stream``; ``None`` on the direct route."""
    input_ids: tuple[int, ...] = field(default=())
    """Token ids for ``engine.stream_ids`` on the direct route."""
    max_evidence: int = 3
    """Most evidence passages in :meth:`metadata`."""
    read_once: bool = False
    """Read the document through the engine's memory cache (see :meth:`load_memory`)."""
    progress: bool = True
    """Show the read's progress bar and report it to the listener given to :meth:`start`."""
    memory_use: MemoryUse = field(default_factory=MemoryUse, compare=False, repr=False)
    """The memory this request answers from, once :meth:`start` (or :meth:`load_memory`,
    :meth:`use_memory`) chose it; empty on the per-question and direct routes."""

    @property
    def uses_memory(self) -> bool:
        """Whether the request answers from a document memory (a split with ``read_once``)."""
        return self.split is not None and self.read_once

    def load_memory(self) -> MemoryProtocol:
        """The document's memory: the one chosen already, else ``engine.memory_for``.

        ``engine.memory_for`` takes it from the engine's cache or reads the document now
        (in the request's ``mode``); :attr:`memory_use` records which.

        Raises:
            ValueError: the request has no document or does not read once.
        """
        if self.split is None or not self.read_once:
            raise ValueError("only a request with a document and read_once uses a memory")
        if self.memory_use.memory is None:
            memory, reused = self.engine.memory_for(
                self.split.document, mode=self.options.get("mode")
            )
            self.memory_use.memory, self.memory_use.reused = memory, reused
            logger.debug(
                "document %s: memory %s (%d tokens)",
                memory.document_sha256[:12],
                "reused" if reused else "read",
                memory.tokens,
            )
        return self.memory_use.memory

    def use_memory(self, memory: MemoryProtocol) -> None:
        """Answer from ``memory`` (kept by the caller: reported as reused), not the cache."""
        if self.split is None or not self.read_once:
            raise ValueError("only a request with a document and read_once uses a memory")
        self.memory_use.memory, self.memory_use.reused = memory, True

    def reporting(self, listener: ProgressListener | None = None) -> AbstractContextManager[None]:
        """The context the request's work runs in.

        The read's progress goes to ``listener`` and the engine's bar shows, unless
        :attr:`progress` is off (then neither).
        """
        return report_progress(listener if self.progress else None, bar=self.progress)

    def start(self, listener: ProgressListener | None = None) -> TextStream:
        """Start the request; iterate the stream for text, close it to stop early.

        With :attr:`uses_memory` the document's memory is found (or read) first, so the
        call may take as long as reading the document. ``listener`` receives the read's
        progress, here and while the stream runs (see :meth:`reporting`).
        """
        with self.reporting(listener):
            stream = self._open()
        if listener is None and self.progress:
            return stream
        return ReportingStream(stream, lambda: self.reporting(listener))

    def _open(self) -> TextStream:
        """The engine's stream for this request (a memory's is read first, if need be)."""
        if self.split is None:
            return self.engine.stream_ids(list(self.input_ids), **self.options)
        logger.debug(
            "route %s: %d document chars, question %r",
            self.route,
            len(self.split.document),
            self.split.question[:80],
        )
        if self.read_once:
            memory = self.load_memory()
            options = {k: v for k, v in self.options.items() if k != "mode"}
            return self.engine.stream(memory, self.split.question, **options)
        return self.engine.stream(self.split.document, self.split.question, **self.options)

    def run(self, listener: ProgressListener | None = None) -> Answer:
        """Run the request to its end (``listener``: as for :meth:`start`)."""
        with self.start(listener) as stream:
            return stream.collect()

    async def arun(self, listener: ProgressListener | None = None) -> Answer:
        """:meth:`run` in a worker thread (the engine blocks: it runs the model)."""
        return await run_in_thread(self.run, listener)

    def aevents(
        self, listener: ProgressListener | None = None
    ) -> AsyncGenerator[str | Answer, None]:
        """:func:`answer_events` of :meth:`start`, run in a worker thread."""
        return iterate_in_thread(lambda: answer_events(self.start(listener)))

    def metadata(self, answer: Answer) -> dict[str, Any]:
        """Model, finish reason, route, usage, memory use and the engine's stats, JSON-ready.

        The same dict on both sides: LangChain's ``response_metadata``, LlamaIndex's
        ``raw``. ``qllm`` is :func:`stats_dict`. ``memory_reused``: ``None`` when no
        document memory was used (``read_once=False``, route ``direct``), ``False`` when
        the document was read for this request, ``True`` when its memory was there
        already; with a memory, ``document_sha256`` names the document read.
        """
        metadata: dict[str, Any] = {
            "model_name": self.model_name,
            "model_provider": PROVIDER,
            "finish_reason": answer.finish_reason,
            "split_route": self.route,
            "usage": usage(answer),
            "evidence": [e.to_dict() for e in self.evidence(answer)],
            "memory_reused": self.memory_use.reused,
            "qllm": stats_dict(answer.stats),
        }
        if self.memory_use.memory is not None:
            metadata["document_sha256"] = self.memory_use.memory.document_sha256
        return metadata

    def cache_read_tokens(self, answer: Answer) -> int:
        """Input tokens taken from a memory that was there already (0 when read now)."""
        return answer.stats.memory_tokens if self.memory_use.reused else 0

    def evidence(self, answer: Answer) -> list[Evidence]:
        """The passages of the document most relevant to the question, best first."""
        if self.split is None:
            return []
        joined = plain_text(self.split.document)
        return collect_evidence(joined, answer.stats.retrieved_blocks, limit=self.max_evidence)


def answer_events(stream: TextStream) -> Generator[str | Answer, None, None]:
    """The stream's text deltas, then its :class:`Answer`; closing this closes the stream.

    A consumer that stops early (``break``, an exception, garbage collection of this
    generator) releases the engine at once; run by :func:`iterate_in_thread`, an async
    consumer that stops early also cuts short a read in progress (``stream.cancel``).
    """
    cancel_with_consumer(stream.cancel)
    with stream:
        yield from stream
        yield stream.collect()


def stats_dict(stats: AnswerStats) -> dict[str, Any]:
    """The stats as JSON-ready data, blocks included, plus ``seconds`` in all."""
    return {**asdict(stats), "seconds": stats.prefill_seconds + stats.decode_seconds}


def stats_from_dict(data: Mapping[str, Any]) -> AnswerStats:
    """The :class:`AnswerStats` that :func:`stats_dict` wrote (keys it added are skipped).

    So an answer that crossed the wire (a server's ``quickllama.qllm``) is the same
    :class:`Answer` as a local one: usage, evidence and source nodes come from it alike.
    """
    names = {f.name for f in fields(AnswerStats)}
    values = {k: v for k, v in data.items() if k in names}
    blocks = tuple(RetrievedBlock(**block) for block in data.get("retrieved_blocks", ()))
    return AnswerStats(**{**values, "retrieved_blocks": blocks})


def usage(answer: Answer) -> dict[str, int]:
    """Tokens read and generated: ``input_tokens``, ``output_tokens``, ``total_tokens``.

    ``input_tokens`` is the whole prompt: the tokens read for the request plus those taken
    from a document memory (``stats.memory_tokens``), as providers count cached input.
    """
    read = answer.stats.tokens_read + answer.stats.memory_tokens
    generated = answer.stats.tokens_generated
    return {"input_tokens": read, "output_tokens": generated, "total_tokens": read + generated}
