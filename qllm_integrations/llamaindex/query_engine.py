"""A query engine that reads whole documents: no chunking, no embeddings, no top-k.

The documents are joined into one text once; every query hands that text and the question
to the engine (``engine.answer(document, question)``), which reads all of it. The answer's
source nodes are the passages most relevant to the question (see
:mod:`qllm_integrations.evidence`), scored.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Sequence
from typing import Any

from llama_index.core.base.response.schema import (
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.bridge.pydantic import Field
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.readers.base import BaseReader
from llama_index.core.schema import (
    BaseNode,
    NodeRelationship,
    NodeWithScore,
    RelatedNodeInfo,
    TextNode,
)
from llama_index.core.settings import Settings
from pydantic import SkipValidation

from qllm_core.results import Answer
from qllm_integrations._async import iterate_in_thread, run_in_thread
from qllm_integrations.evidence import Evidence, JoinedText, collect_evidence
from qllm_integrations.request import Request, answer_events, call_options, text_request

from .documents import join_documents
from .llm import QLLM


class WholeDocumentQueryEngine(CustomQueryEngine):
    """Answers questions about whole documents with one Q-LLM pass each.

    Build it with :meth:`from_documents` or :meth:`from_reader`. With ``streaming=True``
    queries return a ``StreamingResponse`` (``AsyncStreamingResponse`` from ``aquery``)
    whose ``source_nodes`` and ``metadata`` are filled once the stream is consumed.
    """

    llm: SkipValidation[QLLM]
    """The LLM whose engine and generation settings answer the queries."""
    joined: SkipValidation[JoinedText]
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
        return self._response(*self._answer(query_str))

    async def acustom_query(self, query_str: str) -> Response | AsyncStreamingResponse:
        """:meth:`custom_query` with the engine in a worker thread."""
        if self.streaming:
            return self._astream(query_str)
        return self._response(*await run_in_thread(self._answer, query_str))

    def _request(self, query_str: str) -> Request:
        options = call_options(self.llm, None, {"question": query_str, "document": self.document})
        return text_request(self.llm.engine, self.llm.model_label(), "", options)

    def _answer(self, query_str: str) -> tuple[Request, Answer]:
        request = self._request(query_str)
        return request, request.run()

    def _stream(self, query_str: str) -> StreamingResponse:
        request = self._request(query_str)
        events = answer_events(request.start())
        nodes: list[NodeWithScore] = []
        metadata: dict[str, Any] = {}

        def pieces() -> Generator[str, None, None]:
            for item in events:
                if isinstance(item, Answer):
                    self._fill(request, item, nodes, metadata)
                else:
                    yield item

        return StreamingResponse(response_gen=pieces(), source_nodes=nodes, metadata=metadata)

    def _astream(self, query_str: str) -> AsyncStreamingResponse:
        request = self._request(query_str)
        nodes: list[NodeWithScore] = []
        metadata: dict[str, Any] = {}

        async def pieces() -> AsyncGenerator[str, None]:
            async for item in iterate_in_thread(lambda: answer_events(request.start())):
                if isinstance(item, Answer):
                    self._fill(request, item, nodes, metadata)
                else:
                    yield item

        return AsyncStreamingResponse(response_gen=pieces(), source_nodes=nodes, metadata=metadata)

    def _fill(
        self,
        request: Request,
        answer: Answer,
        nodes: list[NodeWithScore],
        metadata: dict[str, Any],
    ) -> None:
        """Put the finished stream's evidence and metadata into the response's containers."""
        response = self._response(request, answer)
        nodes.extend(response.source_nodes)
        metadata.update(response.metadata or {})

    def _response(self, request: Request, answer: Answer) -> Response:
        evidence = collect_evidence(
            self.joined, answer.stats.retrieved_blocks, limit=self.max_sources
        )
        nodes = [evidence_node(item) for item in evidence]
        return Response(response=answer.text, source_nodes=nodes, metadata=request.metadata(answer))


EVIDENCE_KEYS = ("char_start", "char_end", "score", "retrieval_count", "doc_id", "title")
"""Metadata keys added to every evidence node (hidden from LLMs and embeddings)."""


def evidence_node(evidence: Evidence) -> NodeWithScore:
    """An evidence passage as a LlamaIndex source node, scored by its relevance."""
    node = TextNode(
        id_=f"{evidence.doc_id}:{evidence.char_start}-{evidence.char_end}",
        text=evidence.text,
        metadata={
            **evidence.metadata,
            "char_start": evidence.char_start,
            "char_end": evidence.char_end,
            "score": round(evidence.score, 4),
            "retrieval_count": evidence.count,
            "doc_id": evidence.doc_id,
            "title": evidence.title,
        },
        excluded_llm_metadata_keys=[*evidence.metadata, *EVIDENCE_KEYS],
        excluded_embed_metadata_keys=list(EVIDENCE_KEYS),
        start_char_idx=evidence.char_start,
        end_char_idx=evidence.char_end,
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=evidence.doc_id)},
    )
    return NodeWithScore(node=node, score=evidence.score)


def _default_llm() -> QLLM:
    configured = Settings._llm
    return configured if isinstance(configured, QLLM) else QLLM()
