"""Whole-document question answering as one runnable: no splitter, no vector store.

.. code-block:: python

    chain = create_document_qa_chain()
    out = chain.invoke({"document": TextLoader("report.txt"), "question": "Who signed it?"})
    out["answer"], out["evidence"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.document_loaders import BaseLoader
from langchain_core.documents import Document
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda

from qllm_integrations.langchain.chat_models import ChatQLLM
from qllm_integrations.langchain.evidence import collect_evidence, join_texts

DocumentInput = str | Document | Sequence[Document] | BaseLoader
"""What the chain reads: text, a ``Document``, a list of them, or a loader."""


def create_document_qa_chain(
    model: ChatQLLM | None = None,
    *,
    separator: str = "\n\n",
    max_evidence: int = 3,
) -> Runnable[Mapping[str, Any], dict[str, Any]]:
    """A runnable answering ``{"document": ..., "question": ...}`` over the whole document.

    Args:
        model: the chat model; ``None`` builds a ``ChatQLLM`` on the embedded model.
        separator: put between joined documents.
        max_evidence: most evidence spans to return.

    The document may be a string, a ``Document``, a list of ``Document`` objects (joined in
    order) or a ``BaseLoader`` (loaded, then joined). The output is ``{"answer": str,
    "evidence": [Evidence.as_dict(), ...], "message": AIMessage}``; each evidence span
    says which joined document it lies in (``source``) and carries that document's
    metadata, so answers can cite a file and page.
    """
    chat = model if model is not None else ChatQLLM()

    def prepare(
        inputs: Mapping[str, Any],
    ) -> tuple[str, str, list[tuple[int, int]] | None, list[dict[str, Any]] | None]:
        if "question" not in inputs or "document" not in inputs:
            raise KeyError(
                f"the chain's input needs 'document' and 'question' keys, got {sorted(inputs)}"
            )
        text, spans, metadata = _document_text(inputs["document"], separator)
        return text, str(inputs["question"]), spans, metadata

    def finish(message: AIMessage, text: str, spans: Any, metadata: Any) -> dict[str, Any]:
        blocks = message.response_metadata.get("qllm", {}).get("retrieved_blocks", [])
        evidence = collect_evidence(
            blocks, text, spans=spans, metadata=metadata, limit=max_evidence
        )
        return {
            "answer": message.text,
            "evidence": [e.as_dict() for e in evidence],
            "message": message,
        }

    def run(inputs: Mapping[str, Any], config: RunnableConfig) -> dict[str, Any]:
        text, question, spans, metadata = prepare(inputs)
        message = chat.invoke(question, config=config, document=text)
        return finish(message, text, spans, metadata)

    async def arun(inputs: Mapping[str, Any], config: RunnableConfig) -> dict[str, Any]:
        text, question, spans, metadata = prepare(inputs)
        message = await chat.ainvoke(question, config=config, document=text)
        return finish(message, text, spans, metadata)

    return RunnableLambda(run, afunc=arun, name="qllm_document_qa")


def _document_text(
    document: DocumentInput, separator: str
) -> tuple[str, list[tuple[int, int]] | None, list[dict[str, Any]] | None]:
    """The text to read, and per joined document its span and metadata."""
    if isinstance(document, str):
        return document, None, None
    if isinstance(document, BaseLoader):
        document = document.load()
    if isinstance(document, Document):
        return document.page_content, [(0, len(document.page_content))], [document.metadata]
    docs = list(document)
    if not all(isinstance(d, Document) for d in docs):
        raise TypeError(
            "document must be a str, a Document, a list of Document objects or a "
            f"BaseLoader; got a list holding {type(docs[0]).__name__ if docs else '?'}"
        )
    text, spans = join_texts([d.page_content for d in docs], separator)
    return text, spans, [d.metadata for d in docs]
