"""A tool an agent calls to read a whole document without putting it in its own context."""

from __future__ import annotations

from typing import Any

from langchain_core.tools import StructuredTool, ToolException
from pydantic import BaseModel, Field, model_validator

from qllm_core.errors import QLLMError
from qllm_integrations.langchain.chat_models import ChatQLLM
from qllm_integrations.langchain.evidence import collect_evidence, format_evidence

DEFAULT_DESCRIPTION = (
    "Read a long document (given as text, or as the path of a UTF-8 text file) and answer "
    "one question about it. Use it instead of reading the document yourself; the answer "
    "says which parts of the document it came from."
)


class ReadDocumentInput(BaseModel):
    """Arguments of the document-reading tool: a question and exactly one document."""

    question: str = Field(description="What to find out from the document.")
    document: str | None = Field(
        default=None, description="The full text of the document (use this or path)."
    )
    path: str | None = Field(
        default=None, description="Path of a UTF-8 text file to read (use this or document)."
    )

    @model_validator(mode="after")
    def _one_document(self) -> ReadDocumentInput:
        if (self.document is None) == (self.path is None):
            raise ValueError("give exactly one of 'document' (the text) or 'path' (a file)")
        return self


def create_document_reader_tool(
    model: ChatQLLM | None = None,
    *,
    name: str = "read_document",
    description: str = DEFAULT_DESCRIPTION,
    max_evidence: int = 3,
    quote_chars: int = 300,
) -> StructuredTool:
    """A ``StructuredTool`` answering a question about a document passed as text or path.

    Args:
        model: the chat model that reads; ``None`` builds a ``ChatQLLM`` on the embedded
            model.
        name: the tool's name, as the agent sees it.
        description: what the agent is told the tool does.
        max_evidence: most evidence spans quoted in the answer.
        quote_chars: longest quote per span.

    The tool's content is the answer followed by the evidence: character ranges of the
    document the engine recalled while answering (from ``RetrievedBlock.char_start``/
    ``char_end``), most used first, each with a short quote. Its artifact is
    ``{"answer": str, "evidence": [...], "response_metadata": {...}}``. Unreadable files
    and empty inputs come back to the agent as an error message, not an exception.
    """
    chat = model if model is not None else ChatQLLM()

    def finish(message: Any, text: str) -> tuple[str, dict[str, Any]]:
        blocks = message.response_metadata.get("qllm", {}).get("retrieved_blocks", [])
        evidence = collect_evidence(blocks, text, limit=max_evidence)
        content = f"{message.text.strip()}\n\n{format_evidence(evidence, max_chars=quote_chars)}"
        return content, {
            "answer": message.text,
            "evidence": [e.as_dict() for e in evidence],
            "response_metadata": message.response_metadata,
        }

    def read(
        question: str, document: str | None = None, path: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        text = _load(document, path)
        try:
            message = chat.invoke(question, document=text)
        except QLLMError as error:
            raise ToolException(str(error)) from error
        return finish(message, text)

    async def aread(
        question: str, document: str | None = None, path: str | None = None
    ) -> tuple[str, dict[str, Any]]:
        text = _load(document, path)
        try:
            message = await chat.ainvoke(question, document=text)
        except QLLMError as error:
            raise ToolException(str(error)) from error
        return finish(message, text)

    return StructuredTool.from_function(
        func=read,
        coroutine=aread,
        name=name,
        description=description,
        args_schema=ReadDocumentInput,
        response_format="content_and_artifact",
        handle_tool_error=True,
    )


def _load(document: str | None, path: str | None) -> str:
    """The document's text, from the argument or the file."""
    if document is not None:
        return document
    from qllm_core.documents import read_document

    try:
        return read_document(str(path))
    except (OSError, QLLMError) as error:
        raise ToolException(f"cannot read {path}: {error}") from error
