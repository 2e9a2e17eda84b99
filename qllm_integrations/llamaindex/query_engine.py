"""A query engine that reads whole documents: no chunking, no embeddings, no top-k.

The documents are joined into one text once. With the LLM's ``read_once=True`` the
engine reads that text once too, question-free, into a document memory the query engine
keeps; each query then reads only its question on from it. :meth:`persist` writes the
memory and the joined text to a directory and :meth:`from_persist_dir` loads them back,
like a LlamaIndex storage context, so a restart does not read the documents again. With
``read_once=False`` every query reads the whole text again, with the question before and
after it. The answer's source nodes are the passages most relevant to the question (see
:mod:`qllm_integrations.evidence`), scored; the response metadata says whether the memory
was reused (``memory_reused``).
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llama_index.core.base.response.schema import (
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.readers.base import BaseReader
from llama_index.core.schema import (
    BaseNode,
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    RelatedNodeInfo,
    TextNode,
)
from pydantic import SkipValidation

from qllm_core.errors import EmptyInputError, MemoryFileError, MemoryMismatchError
from qllm_core.memory.persistence import read_manifest
from qllm_core.protocol import MemoryProtocol, TextStream
from qllm_core.results import Answer
from qllm_integrations._async import iterate_in_thread, run_in_thread
from qllm_integrations.evidence import Evidence, JoinedText, collect_evidence
from qllm_integrations.request import ProviderRequest, Request, answer_events
from qllm_integrations.routing import provider_text_request
from qllm_integrations.settings import call_options

from .documents import join_documents
from .guards import configured_llm
from .llm import QLLM
from .progress import report_read

MANIFEST = "quickllama_query_engine.json"
"""File of a persist directory holding the joined text and what the memory was read for."""
MEMORY_DIR = "document_memory"
"""Folder of a persist directory holding the document memory (``DocumentMemory.save``)."""
FORMAT = "quickllama-whole-document-query-engine"
VERSION = 1


@dataclass
class _KeptMemory:
    """The memory a query engine answers from; shared by its copies (``model_copy``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    memory: MemoryProtocol | None = None
    mode: str | None = None
    """The ``mode`` it was asked for (``None``: the engine config's)."""

    def obtain(
        self, mode: str | None, read: Callable[[], MemoryProtocol]
    ) -> tuple[MemoryProtocol, bool]:
        """The memory kept for ``mode``, or ``read()`` now and kept: ``(memory, was_kept)``.

        Holds the lock while reading, so concurrent first queries read once.
        """
        with self.lock:
            if self.memory is not None and self.mode == mode:
                return self.memory, True
            self.memory, self.mode = read(), mode
            return self.memory, False


class WholeDocumentQueryEngine(CustomQueryEngine):
    """Answers questions about whole documents with one Q-LLM pass each.

    Build it with :meth:`from_documents` or :meth:`from_reader`, or load one saved with
    :meth:`persist` by :meth:`from_persist_dir`. With ``streaming=True`` queries return a
    ``StreamingResponse`` (``AsyncStreamingResponse`` from ``aquery``) whose
    ``source_nodes`` and ``metadata`` are filled once the stream is consumed.

    With the LLM's ``read_once=True`` the first query reads the documents (or takes
    them from the engine's memory cache) and the query engine keeps that memory: later
    queries, and copies of it such as :func:`~qllm_integrations.llamaindex.document_tool`'s,
    read only their question (``metadata["memory_reused"]`` is ``True``). The memory is
    kept while the LLM's ``mode`` stays the one it was read with.
    """

    llm: SkipValidation[QLLM]
    """The LLM whose engine and generation settings answer the queries."""
    joined: SkipValidation[JoinedText]
    """The joined text and where each source document lies in it."""
    streaming: bool = False
    """Return streaming responses."""
    max_sources: int = Field(default=4, ge=0)
    """Most evidence passages returned as ``source_nodes``."""

    _kept: _KeptMemory = PrivateAttr(default_factory=_KeptMemory)

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

        Raises:
            ValueError: no documents.
            EmptyInputError: no document holds text (a query would read only headers).
        """
        if not documents:
            raise ValueError("no documents to read; pass at least one Document")
        if not any(node.get_content(metadata_mode=MetadataMode.NONE).strip() for node in documents):
            raise EmptyInputError(
                f"none of the {len(documents)} documents holds any text (all are empty or "
                "whitespace); load documents with text (extract a PDF's text first)"
            )
        joined = join_documents(documents, headers=headers)
        return cls(llm=llm or _default_llm(), joined=joined, **kwargs)

    @classmethod
    def from_reader(
        cls, reader: BaseReader, *, load_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> WholeDocumentQueryEngine:
        """Load documents with any LlamaIndex reader (e.g. ``SimpleDirectoryReader``)."""
        return cls.from_documents(reader.load_data(**(load_kwargs or {})), **kwargs)

    @classmethod
    def from_persist_dir(
        cls, persist_dir: str | os.PathLike[str], *, llm: QLLM | None = None, **kwargs: Any
    ) -> WholeDocumentQueryEngine:
        """The query engine :meth:`persist` saved in ``persist_dir``, its memory loaded.

        No document is read: the first query answers from the loaded memory
        (``memory_reused`` is ``True``).

        Args:
            persist_dir: the directory given to :meth:`persist`.
            llm: the QLLM to answer with (as in :meth:`from_documents`); its engine must
                run the model, tokenizer and config the memory was read with.
            **kwargs: ``streaming``, ``max_sources``, ``callback_manager``.

        Raises:
            MemoryFileError: a missing, unreadable, truncated or edited file.
            MemoryMismatchError: the memory was read by another model, tokenizer or engine
                config.
            TypeError: the LLM's engine is not a ``QLLMEngine`` (nothing else can load
                a memory).
        """
        from qllm_core.engine import QLLMEngine
        from qllm_core.memory.document import DocumentMemory, document_hash

        folder = Path(persist_dir)
        manifest = _read_manifest(folder)
        try:
            joined = JoinedText.from_dict(manifest["joined"])
        except (KeyError, TypeError, ValueError) as error:
            raise MemoryFileError(
                f"{folder / MANIFEST} holds no valid joined text ({error!r}); persist the "
                "query engine again"
            ) from error
        digest = manifest.get("document_sha256")
        if document_hash(joined.text) != digest:
            raise MemoryFileError(
                f"the joined text in {folder / MANIFEST} does not match its hash (edited); "
                "persist the query engine again"
            )
        llm = llm or _default_llm()
        engine = llm.engine
        if not isinstance(engine, QLLMEngine):
            raise TypeError(
                f"loading a document memory needs a QLLMEngine, the LLM has a "
                f"{type(engine).__name__}"
            )
        memory = DocumentMemory.load(folder / MEMORY_DIR, engine)
        if memory.document_sha256 != digest:
            raise MemoryMismatchError(
                f"the memory in {folder / MEMORY_DIR} was read from another text than the "
                f"one in {folder / MANIFEST}; persist the query engine again"
            )
        query_engine = cls(llm=llm, joined=joined, **kwargs)
        mode = manifest.get("mode")
        if llm.mode != mode:
            warnings.warn(
                f"the memory in {folder} was read with mode={mode!r} and the LLM asks for "
                f"mode={llm.mode!r}: the first query reads the documents again",
                UserWarning,
                stacklevel=2,
            )
        query_engine._kept.memory, query_engine._kept.mode = memory, mode
        return query_engine

    @property
    def document(self) -> str:
        """The joined text the engine reads."""
        return self.joined.text

    @property
    def memory(self) -> MemoryProtocol | None:
        """The document memory queries answer from; ``None`` until one was read or loaded."""
        return self._kept.memory

    def persist(self, persist_dir: str | os.PathLike[str]) -> None:
        """Save the joined text and its document memory to the directory ``persist_dir``.

        Reads the documents first when no memory is kept yet (in the LLM's ``mode``);
        :meth:`from_persist_dir` loads them back. The memory is written by
        ``DocumentMemory.save``: the model's state after the documents, so the directory
        may be large (``memory.nbytes``).
        """
        folder = Path(persist_dir)
        mode = self.llm.mode
        memory, _ = self._kept.obtain(
            mode, lambda: self.llm.engine.memory_for(self.document, mode=mode)[0]
        )
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST).unlink(missing_ok=True)  # written last: no manifest, no engine
        memory.save(folder / MEMORY_DIR)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "mode": mode,
            "document_sha256": memory.document_sha256,
            "joined": self.joined.to_dict(),
        }
        text = json.dumps(manifest, indent=1, default=str)
        (folder / MANIFEST).write_text(text, encoding="utf-8")

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

    def _request(self, query_str: str) -> ProviderRequest:
        options = call_options(self.llm, None, {"question": query_str, "document": self.document})
        return provider_text_request(self.llm, "", options)

    def _start(self, request: ProviderRequest) -> TextStream:
        """Start ``request``, from the kept memory when it reads once (read it first).

        Only a local request keeps its memory here; a server keeps its own (the LLM's
        client posts the text once and asks by its id).
        """
        if isinstance(request, Request) and request.uses_memory:
            with request.reporting(report_read):
                memory, was_kept = self._kept.obtain(
                    request.options.get("mode"), request.load_memory
                )
            if was_kept:
                request.use_memory(memory)
        return request.start(report_read)

    def _answer(self, query_str: str) -> tuple[ProviderRequest, Answer]:
        request = self._request(query_str)
        with self._start(request) as stream:
            return request, stream.collect()

    def _stream(self, query_str: str) -> StreamingResponse:
        request = self._request(query_str)
        events = answer_events(self._start(request))
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
            async for item in iterate_in_thread(lambda: answer_events(self._start(request))):
                if isinstance(item, Answer):
                    self._fill(request, item, nodes, metadata)
                else:
                    yield item

        return AsyncStreamingResponse(response_gen=pieces(), source_nodes=nodes, metadata=metadata)

    def _fill(
        self,
        request: ProviderRequest,
        answer: Answer,
        nodes: list[NodeWithScore],
        metadata: dict[str, Any],
    ) -> None:
        """Put the finished stream's evidence and metadata into the response's containers."""
        response = self._response(request, answer)
        nodes.extend(response.source_nodes)
        metadata.update(response.metadata or {})

    def _response(self, request: ProviderRequest, answer: Answer) -> Response:
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


def _read_manifest(folder: Path) -> dict[str, Any]:
    return read_manifest(
        folder / MANIFEST,
        format_name=FORMAT,
        version=VERSION,
        missing_hint=f"{folder} holds no persisted query engine (save one with "
        "WholeDocumentQueryEngine.persist)",
        again="persist the query engine again",
    )


def _default_llm() -> QLLM:
    configured = configured_llm()
    return configured if isinstance(configured, QLLM) else QLLM()
