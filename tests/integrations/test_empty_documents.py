"""An empty or whitespace-only document is refused at every door, before any reading.

One table: the engine, the CLI, LangChain's chat model (every route: a system message,
a ``{document}`` template, an attached text-plain block, explicit ``document=``,
``read_once``, streaming, async), its completion model, chain and tool, LlamaIndex's LLM
(completion, chat, templates, document blocks), query engine and tools. Each door must
refuse with ``EmptyInputError`` (the tool and the CLI: their documented equivalents, an
``error: ...`` message and exit status 2), and the engine must never be asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from fakes import FakeEngine  # noqa: E402
from langchain_core.documents import Document as LcDocument  # noqa: E402
from langchain_core.messages import HumanMessage, SystemMessage  # noqa: E402
from langchain_core.prompts import ChatPromptTemplate  # noqa: E402
from llama_index.core import Document as LiDocument  # noqa: E402
from llama_index.core.base.llms.types import (  # noqa: E402
    ChatMessage,
    DocumentBlock,
    MessageRole,
    TextBlock,
)
from llama_index.core.prompts.default_prompts import DEFAULT_TEXT_QA_PROMPT  # noqa: E402

from qllm_core import cli  # noqa: E402
from qllm_core.errors import EmptyInputError  # noqa: E402
from qllm_integrations import langchain as lc  # noqa: E402
from qllm_integrations import llamaindex as li  # noqa: E402

QUESTION = "Who signed the contract?"
BLANK = " \n\t "

Door = Callable[[FakeEngine, Path], Any]
"""Calls one door with an empty document; returns what it said, if it did not raise."""


def _cli(*argv: str) -> Door:
    def door(engine: FakeEngine, tmp_path: Path) -> str:
        empty = tmp_path / "empty.txt"
        empty.write_text(BLANK, encoding="utf-8")
        args = [str(empty) if a == "EMPTY" else a for a in argv]
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            status = cli.main(args)
        assert status == 2
        return err.getvalue()

    return door


def _cli_stdin(engine: FakeEngine, tmp_path: Path) -> str:
    saved = cli.sys.stdin
    cli.sys.stdin = io.TextIOWrapper(io.BytesIO(BLANK.encode()), encoding="utf-8")
    try:
        return _cli("ask", "-q", QUESTION)(engine, tmp_path)
    finally:
        cli.sys.stdin = saved


def _chat(*messages: Any, **kwargs: Any) -> Door:
    return lambda e, _: lc.ChatQLLM(engine=e, **kwargs).invoke(list(messages))


def _text_plain_block(engine: FakeEngine, _: Path) -> Any:
    attached = {"type": "text-plain", "text": BLANK, "mime_type": "text/plain"}
    message = HumanMessage(content=[attached, {"type": "text", "text": QUESTION}])
    return lc.ChatQLLM(engine=engine).invoke([message])


def _chat_template(engine: FakeEngine, _: Path) -> Any:
    prompt = ChatPromptTemplate.from_messages([("system", "{document}"), ("human", "{q}")])
    return (prompt | lc.ChatQLLM(engine=engine)).invoke({"document": "", "q": QUESTION})


def _lc_tool(document: str | None = BLANK) -> Door:
    def door(engine: FakeEngine, tmp_path: Path) -> str:
        tool = lc.create_document_reader_tool(lc.ChatQLLM(engine=engine))
        if document is not None:
            return tool.invoke({"question": QUESTION, "document": document})
        empty = tmp_path / "empty.txt"
        empty.write_text(BLANK, encoding="utf-8")
        return tool.invoke({"question": QUESTION, "path": str(empty)})

    return door


def _li_chat(*messages: ChatMessage) -> Door:
    return lambda e, _: li.QLLM(engine=e).chat(list(messages))


def _li_block(engine: FakeEngine, _: Path) -> Any:
    blocks = [
        DocumentBlock(data=BLANK.encode(), document_mimetype="text/plain"),
        TextBlock(text=QUESTION),
    ]
    return li.QLLM(engine=engine).chat([ChatMessage(role=MessageRole.USER, blocks=blocks)])


def _li_query_engine(make: Callable[..., Any]) -> Door:
    documents = [LiDocument(text=""), LiDocument(text=BLANK, metadata={"title": "Blank"})]
    return lambda e, _: make(documents, llm=li.QLLM(engine=e))


DOORS: dict[str, Door] = {
    "engine answer": lambda _e, _p: _tiny().answer(BLANK, QUESTION),
    "engine stream": lambda _e, _p: _tiny().stream("", QUESTION),
    "engine read": lambda _e, _p: _tiny().read(BLANK),
    "engine memory_for": lambda _e, _p: _tiny().memory_for(""),
    "cli ask --file": _cli("ask", "--file", "EMPTY", "-q", QUESTION),
    "cli ask stdin": _cli_stdin,
    "cli read": _cli("read", "EMPTY", "--save", "out.qllm"),
    "cli chat": _cli("chat", "--file", "EMPTY"),
    "lc chat, empty system message": _chat(SystemMessage(""), HumanMessage(QUESTION)),
    "lc chat, blank system message": _chat(SystemMessage(BLANK), HumanMessage(QUESTION)),
    "lc chat, {document} template": _chat_template,
    "lc chat, empty text-plain block": _text_plain_block,
    "lc chat, question line only": _chat(HumanMessage(f"Question: {QUESTION}")),
    "lc chat, explicit document": lambda e, _: lc.ChatQLLM(engine=e).invoke(QUESTION, document=""),
    "lc chat, read_once": lambda e, _: lc.ChatQLLM(engine=e, read_once=True).invoke(
        QUESTION, document=BLANK
    ),
    "lc chat, stream": lambda e, _: list(
        lc.ChatQLLM(engine=e).stream([SystemMessage(""), HumanMessage(QUESTION)])
    ),
    "lc chat, async": lambda e, _: asyncio.run(
        lc.ChatQLLM(engine=e).ainvoke([SystemMessage(""), HumanMessage(QUESTION)])
    ),
    "lc llm, short template": lambda e, _: lc.QLLM(engine=e).invoke(
        f"{BLANK}\n\nQuestion: {QUESTION}\nAnswer:"
    ),
    "lc llm, explicit document": lambda e, _: lc.QLLM(engine=e).invoke(QUESTION, document=BLANK),
    "lc chain, text": lambda e, _: lc.create_document_qa_chain(lc.ChatQLLM(engine=e)).invoke(
        {"document": "", "question": QUESTION}
    ),
    "lc chain, documents": lambda e, _: lc.create_document_qa_chain(lc.ChatQLLM(engine=e)).invoke(
        {
            "document": [LcDocument(page_content=""), LcDocument(page_content=BLANK)],
            "question": QUESTION,
        }
    ),
    "lc tool, text": _lc_tool(),
    "lc tool, file": _lc_tool(None),
    "li complete, short template": lambda e, _: li.QLLM(engine=e).complete(
        f"{BLANK}\nQuery: {QUESTION}\nAnswer: "
    ),
    "li complete, explicit document": lambda e, _: li.QLLM(engine=e).complete(
        QUESTION, document=BLANK
    ),
    "li stream_complete": lambda e, _: list(
        li.QLLM(engine=e).stream_complete(QUESTION, document="")
    ),
    "li chat, empty system message": _li_chat(
        ChatMessage(role=MessageRole.SYSTEM, content=""),
        ChatMessage(role=MessageRole.USER, content=QUESTION),
    ),
    "li achat": lambda e, _: asyncio.run(
        li.QLLM(engine=e).achat(
            [
                ChatMessage(role=MessageRole.SYSTEM, content=BLANK),
                ChatMessage(role=MessageRole.USER, content=QUESTION),
            ]
        )
    ),
    "li predict, QA template": lambda e, _: li.QLLM(engine=e).predict(
        DEFAULT_TEXT_QA_PROMPT, context_str="", query_str=QUESTION
    ),
    "li chat, empty document block": _li_block,
    "li query engine": _li_query_engine(li.WholeDocumentQueryEngine.from_documents),
    "li query engine tool": _li_query_engine(li.document_tool),
    "li function tool": _li_query_engine(li.document_function_tool),
}


def _tiny() -> Any:
    from fakes import tiny_engine

    return tiny_engine()


@pytest.mark.parametrize("door", DOORS)
def test_an_empty_document_is_refused(
    door: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_engine_class", _no_model)
    engine = FakeEngine()
    try:
        said = DOORS[door](engine, tmp_path)
    except EmptyInputError as error:
        said = f"error: {error}"
    assert isinstance(said, str) and "error: " in said and "empty" in said, said
    assert engine.calls == [] and engine.reads == []


def _no_model() -> None:
    raise AssertionError("the CLI loaded a model for an empty document")
