"""Agent tools that read whole documents with Q-LLM.

A ReActAgent or FunctionAgent (driven by any LLM) calls the tool with a question; the tool
reads every document in full and returns the answer, with the evidence passages kept in the
tool output's ``raw_output`` (a LlamaIndex ``Response``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from llama_index.core.base.response.schema import Response
from llama_index.core.schema import BaseNode
from llama_index.core.tools import FunctionTool, QueryEngineTool

from .llm import QLLM
from .query_engine import WholeDocumentQueryEngine

DEFAULT_NAME = "read_documents"
_MAX_TITLES = 5


def document_tool(
    documents: Sequence[BaseNode] | WholeDocumentQueryEngine,
    *,
    name: str = DEFAULT_NAME,
    description: str | None = None,
    llm: QLLM | None = None,
    return_direct: bool = False,
) -> QueryEngineTool:
    """A ``QueryEngineTool`` over a :class:`WholeDocumentQueryEngine`.

    Args:
        documents: the documents to read, or a query engine already built on them.
        name: the tool's name as the agent sees it.
        description: what the agent is told; by default it names the documents.
        llm: the QLLM that reads (when ``documents`` are documents).
        return_direct: return the tool's answer as the agent's final answer.

    """
    engine = _engine(documents, llm)
    return QueryEngineTool.from_defaults(
        query_engine=engine,
        name=name,
        description=description or describe(engine),
        return_direct=return_direct,
    )


def document_function_tool(
    documents: Sequence[BaseNode] | WholeDocumentQueryEngine,
    *,
    name: str = DEFAULT_NAME,
    description: str | None = None,
    llm: QLLM | None = None,
    return_direct: bool = False,
) -> FunctionTool:
    """A ``FunctionTool`` taking ``question: str``, with sync and async versions.

    Arguments as for :func:`document_tool`. The tool output's ``content`` is the answer and
    its ``raw_output`` the ``Response``, evidence passages included.
    """
    engine = _engine(documents, llm)

    def read(question: str) -> Response:
        return cast(Response, engine.query(question))

    async def aread(question: str) -> Response:
        return cast(Response, await engine.aquery(question))

    return FunctionTool.from_defaults(
        fn=read,
        async_fn=aread,
        name=name,
        description=description or describe(engine),
        return_direct=return_direct,
    )


def describe(engine: WholeDocumentQueryEngine) -> str:
    """A tool description naming the documents ``engine`` reads."""
    titles = [source.title for source in engine.joined.sources]
    named = ", ".join(titles[:_MAX_TITLES]) + (
        f" and {len(titles) - _MAX_TITLES} more" if len(titles) > _MAX_TITLES else ""
    )
    size = len(engine.document)
    return (
        f"Reads the whole text of {named} ({size:,} characters) and answers one question "
        "about it, citing the passages it used. Input: a complete, self-contained "
        "question in natural language."
    )


def _engine(
    documents: Sequence[BaseNode] | WholeDocumentQueryEngine, llm: QLLM | None
) -> WholeDocumentQueryEngine:
    """A non-streaming query engine (tools return whole answers)."""
    if isinstance(documents, WholeDocumentQueryEngine):
        return (
            documents.model_copy(update={"streaming": False}) if documents.streaming else documents
        )
    return WholeDocumentQueryEngine.from_documents(documents, llm=llm)
