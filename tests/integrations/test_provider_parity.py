"""One input, one outcome: every input runs through LangChain and LlamaIndex alike.

Each case describes a call once, in neutral terms (turns of text blocks, attached
documents, images; or a plain prompt), and is translated into each framework's own types.
Both sides must ask the engine the same thing (the same document and question, or the
same prompt tokens on the direct route) and answer the same, or refuse with the same
error type.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from fakes import FakeEngine, keep_gate_open  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage  # noqa: E402
from llama_index.core.base.llms.types import (  # noqa: E402
    ChatMessage,
    DocumentBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
)

from qllm_core.errors import EmptyInputError, InvalidDocumentError  # noqa: E402
from qllm_integrations import langchain as lc  # noqa: E402
from qllm_integrations import llamaindex as li  # noqa: E402

LONG = " ".join(f"Line {i}: the harbour master logged ship number {i}." for i in range(60))
"""A document far longer than the tiny config's local window (the split route)."""
QUESTION = "Which ship did the harbour master log last?"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(40))


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Attached:
    """A document block: raw bytes and their MIME type."""

    data: bytes
    mimetype: str = "text/plain"


@dataclass(frozen=True)
class Image:
    data: bytes = PNG


Block = Text | Attached | Image


@dataclass(frozen=True)
class Case:
    """A chat (``turns``: role and blocks) or a plain ``prompt``, and the call's options."""

    turns: tuple[tuple[str, tuple[Block, ...]], ...] = ()
    prompt: object = None
    options: dict[str, Any] = field(default_factory=dict)


def chat(*turns: tuple[str, tuple[Block, ...]], **options: Any) -> Case:
    return Case(turns=turns, options=options)


def text(prompt: object, **options: Any) -> Case:
    return Case(prompt=prompt, options=options)


CASES: dict[str, Case] = {
    "short prompt, direct": text("Hello, who are you?"),
    "long prompt with a question line": text(f"{LONG}\n\nQuestion: {QUESTION}\nAnswer:"),
    "explicit question and document": text("", question=QUESTION, document=LONG),
    "empty prompt": text(""),
    "whitespace prompt": text("  \n\t "),
    "bytes prompt": text(LONG.encode()),
    "bytes document": text("", question=QUESTION, document=LONG.encode()),
    "short chat, direct": chat(("system", (Text("Be brief."),)), ("user", (Text("Hi!"),))),
    "document in the system turn": chat(("system", (Text(LONG),)), ("user", (Text(QUESTION),))),
    "two text blocks in the document turn": chat(
        ("system", (Text(LONG[:900]), Text(LONG[900:]))), ("user", (Text(QUESTION),))
    ),
    "two text blocks, direct": chat(
        ("user", (Text("Say hello"), Text("in French."))),
    ),
    "earlier turns and a tool result": chat(
        ("user", (Text("Read the log."),)),
        ("assistant", (Text("I read it."),)),
        ("tool", (Text(LONG),)),
        ("user", (Text(QUESTION),)),
    ),
    "whitespace document turn": chat(("system", (Text("   \n"),)), ("user", (Text(QUESTION),))),
    "whitespace question": chat(("system", (Text(LONG),)), ("user", (Text("  \n "),))),
    "no user message": chat(
        ("system", (Text(LONG),)),
    ),
    "text/plain document block": chat(
        ("user", (Attached(b"\xef\xbb\xbf" + LONG.encode()), Text(QUESTION))),
    ),
    "text/markdown document block": chat(
        ("user", (Attached(LONG.encode(), "text/markdown"), Text(QUESTION))),
    ),
    "empty text/plain document block": chat(
        ("user", (Attached(b"  "), Text(QUESTION))),
    ),
    "latin-1 text/plain document block": chat(
        ("user", (Attached("café ".encode("latin-1") * 50), Text(QUESTION))),
    ),
    "binary text/plain document block": chat(
        ("user", (Attached(PNG), Text(QUESTION))),
    ),
    "PDF document block": chat(
        ("user", (Attached(b"%PDF-1.7 ...", "application/pdf"), Text(QUESTION))),
    ),
    "image block": chat(
        ("user", (Image(), Text(QUESTION))),
    ),
}


# ---------------------------------------------------------------- translations
def lc_message(role: str, blocks: tuple[Block, ...]) -> Any:
    content: list[Any] = []
    for block in blocks:
        if isinstance(block, Text):
            content.append({"type": "text", "text": block.text})
        elif isinstance(block, Attached):
            data = base64.b64encode(block.data).decode()
            content.append({"type": "file", "base64": data, "mime_type": block.mimetype})
        else:
            data = base64.b64encode(block.data).decode()
            content.append({"type": "image", "base64": data, "mime_type": "image/png"})
    if role == "system":
        return SystemMessage(content=content)
    if role == "assistant":
        return AIMessage(content=content)
    if role == "tool":
        return ToolMessage(content=content, tool_call_id="call-1")
    return HumanMessage(content=content)


def li_message(role: str, blocks: tuple[Block, ...]) -> ChatMessage:
    out: list[Any] = []
    for block in blocks:
        if isinstance(block, Text):
            out.append(TextBlock(text=block.text))
        elif isinstance(block, Attached):
            out.append(DocumentBlock(data=block.data, document_mimetype=block.mimetype))
        else:
            out.append(ImageBlock(image=block.data, image_mimetype="image/png"))
    return ChatMessage(role=MessageRole(role), blocks=out)


def run_langchain(case: Case, engine: FakeEngine) -> str:
    if case.turns:
        model: Any = lc.ChatQLLM(engine=engine)
        return str(model.invoke([lc_message(r, b) for r, b in case.turns], **case.options).text)
    return str(lc.QLLM(engine=engine).invoke(case.prompt, **case.options))


def run_llamaindex(case: Case, engine: FakeEngine) -> str:
    llm = li.QLLM(engine=engine)
    if case.turns:
        messages = [li_message(r, b) for r, b in case.turns]
        return str(llm.chat(messages, **case.options).message.content)
    return llm.complete(case.prompt, **case.options).text  # type: ignore[arg-type]


def outcome(run: Callable[[Case, FakeEngine], str], case: Case) -> tuple[Any, ...]:
    """What the engine was asked and what came back, or the error's type."""
    engine = FakeEngine()
    try:
        answer = run(case, engine)
    except Exception as error:  # the type is the outcome compared
        return ("error", type(error).__name__)
    asked = [
        (c.method, c.document, c.question, engine.tokenizer.decode(c.input_ids or []))
        for c in engine.calls
    ]
    return ("answer", answer, asked)


EXPECTED_ERRORS = {
    "empty prompt": EmptyInputError,
    "whitespace prompt": EmptyInputError,
    "bytes prompt": InvalidDocumentError,
    "bytes document": InvalidDocumentError,
    "whitespace document turn": EmptyInputError,
    "whitespace question": EmptyInputError,
    "no user message": EmptyInputError,
    "empty text/plain document block": EmptyInputError,
    "latin-1 text/plain document block": InvalidDocumentError,
    "binary text/plain document block": InvalidDocumentError,
    "PDF document block": InvalidDocumentError,
    "image block": InvalidDocumentError,
}


@pytest.mark.parametrize("name", list(CASES))
def test_both_providers_give_the_same_outcome(name: str) -> None:
    case = CASES[name]
    langchain, llamaindex = outcome(run_langchain, case), outcome(run_llamaindex, case)
    assert langchain == llamaindex
    expected = EXPECTED_ERRORS.get(name)
    if expected is not None:
        assert langchain == ("error", expected.__name__)
    else:
        assert langchain[0] == "answer" and langchain[2], "the engine was not asked"


def test_the_cases_cover_both_routes() -> None:
    """The table holds direct and split answers, so both encodings are compared."""
    methods = set()
    for case in CASES.values():
        result = outcome(run_llamaindex, case)
        if result[0] == "answer":
            methods |= {asked[0] for asked in result[2]}
    assert methods == {"stream", "stream_ids"}


def test_text_blocks_are_joined_by_a_newline() -> None:
    """Two text blocks reach the engine as two lines on both sides, never glued."""
    result = outcome(run_langchain, CASES["two text blocks in the document turn"])
    assert result[0] == "answer"
    assert result[2][0][1] == LONG[:900] + "\n" + LONG[900:]


def test_attached_text_is_decoded_alike() -> None:
    """A UTF-8 BOM is dropped, and the attached text becomes the document."""
    result = outcome(run_llamaindex, CASES["text/plain document block"])
    assert result[0] == "answer"
    assert result[2][0][1:3] == (LONG, QUESTION)


def test_llamaindex_builds_async_requests_off_the_event_loop() -> None:
    """A slow request build (token counting) runs in a worker thread, not on the loop."""
    import threading

    engine = FakeEngine()
    gate = threading.Event()
    counted: list[bool] = []
    real_count = engine.count_tokens

    def count_tokens(text: str) -> int:
        counted.append(True)
        gate.clear()
        if not gate.wait(timeout=10):
            raise RuntimeError("the event loop did not run while the request was built")
        return real_count(text)

    engine.count_tokens = count_tokens  # type: ignore[method-assign]
    llm = li.QLLM(engine=engine)
    messages = [ChatMessage(role=MessageRole.USER, content="Hello there")]

    async def main() -> None:
        keeper = asyncio.create_task(keep_gate_open(gate))
        try:
            await llm.achat(messages)
            await llm.acomplete("Hello there")
            async for _ in await llm.astream_chat(messages):
                pass
            async for _ in await llm.astream_complete("Hello there"):
                pass
        finally:
            keeper.cancel()

    asyncio.run(main())
    assert len(counted) == 4
