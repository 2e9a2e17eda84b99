"""A query engine that reads whole documents: no chunking, no embeddings, no top-k.

The documents are joined into one text once; every query hands that text and the question
to the engine (``engine.answer(document, question)``), which reads all of it. The answer's
source nodes are the passages the engine recalled most while answering (see
:mod:`.evidence`).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Iterator, Sequence
from typing import Any

from llama_index.core.base.response.schema import (
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.bridge.pydantic import Field
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.readers.base import BaseReader
from llama_index.core.schema import BaseNode, NodeWithScore
from llama_index.core.settings import Settings
from pydantic import SkipValidation

from qllm_core import Answer, AnswerStream
from qllm_integrations.split import PromptSplit

from .._async import iterate_in_thread, run_in_thread
from .documents import JoinedDocument, join_documents
from .evidence import evidence_nodes
from .llm import QLLM, usage


class WholeDocumentQueryEngine(CustomQueryEngine):
    """Answers questions about whole documents with one Q-LLM pass each.

    Build it with :meth:`from_documents` or :meth:`from_reader`. With ``streaming=True``
    queries return a ``StreamingResponse`` (``AsyncStreamingResponse`` from ``aquery``)
    whose ``source_nodes`` and ``metadata`` are filled once the stream is consumed.
    """

    llm: SkipValidation[QLLM]
    """The LLM whose engine and generation settings answer the queries."""
    joined: SkipValidation[JoinedDocument]
    """The joined text and where each source document lies in it."""
    streaming: bool = False
    """Return streaming responses."""
    max_sources: int = Field(default=4, ge=0)
    """Most evidence passages returned as ``source_nodes``."""

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[BaseNode],
        *,
        llm: QLLM | None = None,
        headers: bool = True,
        **kwargs: Any,
    ) -> WholeDocumentQueryEngine:
        """Join ``documents`` (or chunked nodes of them) and build the engine.

        Args:
            documents: Documents or nodes; chunks of one document are stitched back.
            llm: the QLLM to answer with; default ``Settings.llm`` when it is a QLLM,
                else a ``QLLM()`` for the embedded model.
            headers: put each document's title and metadata before its text.
            **kwargs: ``streaming``, ``max_sources``, ``callback_manager``.

        """
        if not documents:
            raise ValueError("no documents to read; pass at least one Document")
        joined = join_documents(documents, headers=headers)
        return cls(llm=llm or _default_llm(), joined=joined, **kwargs)

    @classmethod
    def from_reader(
        cls, reader: BaseReader, *, load_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> WholeDocumentQueryEngine:
        """Load documents with any LlamaIndex reader (e.g. ``SimpleDirectoryReader``)."""
        return cls.from_documents(reader.load_data(**(load_kwargs or {})), **kwargs)

    @property
    def document(self) -> str:
        """The joined text the engine reads."""
        return self.joined.text

    def custom_query(self, query_str: str) -> Response | StreamingResponse:
        """Answer ``query_str`` from the whole text."""
        if self.streaming:
            return self._stream(query_str)
        return self._response(self._answer(query_str), query_str)

    async def acustom_query(self, query_str: str) -> Response | AsyncStreamingResponse:
        """:meth:`custom_query` with the engine in a worker thread."""
        if self.streaming:
            return self._astream(query_str)
        return self._response(await run_in_thread(self._answer, query_str), query_str)

    def _answer(self, query_str: str) -> Answer:
        return self.llm.engine.answer(self.joined.text, query_str, **self.llm.generation_options())

    def _start(self, query_str: str) -> AnswerStream:
        return self.llm.engine.stream(self.joined.text, query_str, **self.llm.generation_options())

    def _stream(self, query_str: str) -> StreamingResponse:
        stream = self._start(query_str)
        nodes: list[NodeWithScore] = []
        metadata: dict[str, Any] = {}

        def pieces() -> Generator[str, None, None]:
            yield from stream
            self._fill(stream, query_str, nodes, metadata)

        return StreamingResponse(response_gen=pieces(), source_nodes=nodes, metadata=metadata)

    def _astream(self, query_str: str) -> AsyncStreamingResponse:
        nodes: list[NodeWithScore] = []
        metadata: dict[str, Any] = {}
        started: list[AnswerStream] = []

        def start() -> Iterator[str]:
            started.append(self._start(query_str))
            return iter(started[0])

        async def pieces() -> AsyncGenerator[str, None]:
            async for piece in iterate_in_thread(start):
                yield piece
            self._fill(started[0], query_str, nodes, metadata)

        return AsyncStreamingResponse(response_gen=pieces(), source_nodes=nodes, metadata=metadata)

    def _fill(
        self,
        stream: AnswerStream,
        query_str: str,
        nodes: list[NodeWithScore],
        metadata: dict[str, Any],
    ) -> None:
        """Put the finished stream's evidence and usage into the response's containers."""
        assert stream.result is not None, "the engine's stream ended without a result"
        response = self._response(stream.result, query_str)
        nodes.extend(response.source_nodes)
        metadata.update(response.metadata or {})

    def _response(self, answer: Answer, query_str: str) -> Response:
        nodes = evidence_nodes(
            self.joined, answer.stats.retrieved_blocks, max_sources=self.max_sources
        )
        split = PromptSplit(document=self.joined.text, question=query_str, route="explicit")
        return Response(response=answer.text, source_nodes=nodes, metadata=usage(answer, split))


def _default_llm() -> QLLM:
    configured = Settings._llm
    return configured if isinstance(configured, QLLM) else QLLM()
