"""Whole documents for LangChain: a question-answering chain and an agent's reader tool.

No splitter, no vector store: the chain and the tool hand the whole text to ``ChatQLLM``
and return the answer with its evidence passages (most relevant first, with scores).

They pass the text as ``document=``, so with the model's ``read_once=True`` a text
is read once and kept in the engine's memory cache: an agent calling the tool ten times
about one document has it read once, and each answer's metadata says whether its memory
was reused (``memory_reused``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.document_loaders import BaseLoader
from langchain_core.documents import Document
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.tools import StructuredTool, ToolException
from pydantic import BaseModel, Field, ValidationError

from qllm_core.errors import QLLMError
from qllm_core.results import RetrievedBlock
from qllm_integrations.evidence import (
    SEPARATOR,
    JoinedText,
    Source,
    collect_evidence,
    format_evidence,
    join_texts,
    plain_text,
)
from qllm_integrations.langchain.chat_models import ChatQLLM, get_evidence

DocumentInput = str | Document | Sequence[Document] | BaseLoader
"""What the chain reads: text, a ``Document``, a list of them, or a loader."""

DEFAULT_DESCRIPTION = (
    "Read a long document (given as text, or as the path of a UTF-8 text file) and answer "
    "one question about it. Use it instead of reading the document yourself; the answer "
    "says which parts of the document it came from."
)


def create_document_qa_chain(
    model: ChatQLLM | None = None, *, max_evidence: int = 3
) -> Runnable[Mapping[str, Any], dict[str, Any]]:
    """A runnable answering ``{"document": ..., "question": ...}`` over the whole document.

    The document may be a string, a ``Document``, a list of ``Document`` objects (joined in
    order) or a ``BaseLoader`` (loaded, then joined). The output is ``{"answer": str,
    "evidence": [Evidence.to_dict(), ...], "message": AIMessage}``; each passage names the
    joined document it lies in (``source``, ``title``) and carries its metadata, so
    answers can cite a file and page. The same document asked about again is not read
    again while the engine's memory cache holds it (the model's ``read_once``);
    ``message.response_metadata["memory_reused"]`` says whether it was.
    """
    chat = model if model is not None else ChatQLLM()

    def prepare(inputs: Mapping[str, Any]) -> tuple[JoinedText, str]:
        if "question" not in inputs or "document" not in inputs:
            raise KeyError(
                f"the chain's input needs 'document' and 'question' keys, got {sorted(inputs)}"
            )
        return joined_documents(inputs["document"]), inputs["question"]

    def finish(message: AIMessage, joined: JoinedText) -> dict[str, Any]:
        blocks = message.response_metadata["qllm"]["retrieved_blocks"]
        evidence = collect_evidence(
            joined, [RetrievedBlock(**b) for b in blocks], limit=max_evidence
        )
        return {
            "answer": message.text,
            "evidence": [e.to_dict() for e in evidence],
            "message": message,
        }

    def run(inputs: Mapping[str, Any], config: RunnableConfig) -> dict[str, Any]:
        joined, question = prepare(inputs)
        return finish(chat.invoke(question, config=config, document=joined.text), joined)

    async def arun(inputs: Mapping[str, Any], config: RunnableConfig) -> dict[str, Any]:
        joined, question = prepare(inputs)
        return finish(await chat.ainvoke(question, config=config, document=joined.text), joined)

    return RunnableLambda(run, afunc=arun, name="qllm_document_qa")


def joined_documents(document: DocumentInput) -> JoinedText:
    """The text to read, with each joined ``Document``'s span and metadata."""
    if isinstance(document, str):
        return plain_text(document)
    if isinstance(document, BaseLoader):
        document = document.load()
    docs = [document] if isinstance(document, Document) else list(document)
    if not all(isinstance(d, Document) for d in docs):
        raise TypeError(
            "document must be a str, a Document, a list of Document objects or a "
            f"BaseLoader; got a list holding {type(docs[0]).__name__ if docs else '?'}"
        )
    parts = [
        (
            Source(str(d.id or i), str(d.metadata.get("source", f"document {i}")), d.metadata),
            [(d.page_content, 0)],
        )
        for i, d in enumerate(docs)
    ]
    return join_texts(parts, separator=SEPARATOR)


class ReadDocumentInput(BaseModel):
    """Arguments of the document-reading tool: a question and exactly one document."""

    question: str = Field(description="What to find out from the document.")
    document: str | None = Field(
        default=None, description="The full text of the document (use this or path)."
    )
    path: str | None = Field(
        default=None, description="Path of a UTF-8 text file to read (use this or document)."
    )


def create_document_reader_tool(
    model: ChatQLLM | None = None,
    *,
    name: str = "read_document",
    description: str = DEFAULT_DESCRIPTION,
    quote_chars: int = 300,
) -> StructuredTool:
    """A ``StructuredTool`` answering a question about a document passed as text or path.

    Args:
        model: the chat model that reads (its ``max_evidence`` caps the passages quoted);
            ``None`` builds a ``ChatQLLM`` on the embedded model.
        name: the tool's name, as the agent sees it.
        description: what the agent is told the tool does.
        quote_chars: longest quote per passage.

    The tool's content is the answer followed by the evidence passages, most relevant
    first, each with its score, character range and a short quote. Its artifact is
    ``{"answer": str, "evidence": [...], "response_metadata": {...}}``. Every input
    problem (missing or extra arguments, an unreadable file, empty text) comes back to the
    agent as an error message, never as an exception.

    With the model's ``read_once=True`` each document (text or file content) is read
    once and kept in the engine's memory cache, so repeated calls about it read only the
    question (``response_metadata["memory_reused"]`` is ``True``).
    """
    chat = model if model is not None else ChatQLLM()

    def finish(message: AIMessage) -> tuple[str, dict[str, Any]]:
        evidence = get_evidence(message)
        content = f"{message.text.strip()}\n\n{format_evidence(evidence, max_chars=quote_chars)}"
        return content, {
            "answer": message.text,
            "evidence": [e.to_dict() for e in evidence],
            "response_metadata": message.response_metadata,
        }

    def read(
        question: str, document: str | None = None, path: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        text = _load(document, path)
        try:
            return finish(chat.invoke(question, document=text))
        except QLLMError as error:
            raise ToolException(f"error: {error}") from error

    async def aread(
        question: str, document: str | None = None, path: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        text = _load(document, path)
        try:
            return finish(await chat.ainvoke(question, document=text))
        except QLLMError as error:
            raise ToolException(f"error: {error}") from error

    return StructuredTool.from_function(
        func=read,
        coroutine=aread,
        name=name,
        description=description,
        args_schema=ReadDocumentInput,
        response_format="content_and_artifact",
        handle_tool_error=True,
        handle_validation_error=_validation_message,
    )


def _validation_message(error: ValidationError | Any) -> str:
    problems = (
        "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'input'}: {e['msg']}" for e in error.errors()
        )
        if isinstance(error, ValidationError)
        else str(error)
    )
    return (
        f"error: bad arguments ({problems}); call it with 'question' and one of "
        "'document' or 'path'"
    )


def _load(document: str | None, path: str | None) -> str:
    """The document's text, from the argument or the file; problems as ToolException."""
    if (document is None) == (path is None):
        raise ToolException(
            "error: give exactly one of 'document' (the text) or 'path' (a file), "
            f"got {'both' if document is not None else 'neither'}"
        )
    if document is not None:
        return document
    from qllm_core.inputs.documents import read_document

    try:
        return read_document(str(path))
    except (OSError, QLLMError) as error:
        raise ToolException(f"error: cannot read {path}: {error}") from error
