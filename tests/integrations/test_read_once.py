"""Read once (``read_once``, issue 14): both providers read a document through the engine's
memory cache, so a second question about it reads only the question.

Runs on the fake engine, whose ``memory_for`` keeps memories in a dict and lists every
document it reads (``FakeEngine.reads``); reuse is asserted through the response metadata
and those reads, never through timing.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from fakes import FakeEngine, FakeMemory  # noqa: E402
from langchain_core.messages import HumanMessage, SystemMessage  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage, MessageRole  # noqa: E402

from qllm_core.errors import InvalidOptionError  # noqa: E402
from qllm_integrations import langchain as lc  # noqa: E402
from qllm_integrations import llamaindex as li  # noqa: E402
from qllm_integrations.langchain import (  # noqa: E402
    create_document_qa_chain,
    create_document_reader_tool,
)
from qllm_integrations.request import Request  # noqa: E402
from qllm_integrations.routing import text_request  # noqa: E402
from qllm_integrations.settings import call_options  # noqa: E402

DOC = " ".join(f"Entry {i}: the harbour logged ship number {i} at dawn." for i in range(40))
OTHER_DOC = DOC.replace("dawn", "dusk")
QUESTIONS = ("Which ship did the harbour log last?", "When was ship number 7 logged?")
DOC_SHA = hashlib.sha256(DOC.encode()).hexdigest()

Ask = Callable[[FakeEngine, str, dict[str, Any]], dict[str, Any]]
"""(engine, question, settings) -> the response metadata of one call with DOC."""


def _lc_chat(engine: FakeEngine, question: str, settings: dict[str, Any]) -> dict[str, Any]:
    chat = lc.ChatQLLM(engine=engine, **{"read_once": True, **settings})
    return chat.invoke([SystemMessage(DOC), HumanMessage(question)]).response_metadata


def _lc_text(engine: FakeEngine, question: str, settings: dict[str, Any]) -> dict[str, Any]:
    result = lc.QLLM(engine=engine, **{"read_once": True, **settings}).generate(
        [question], document=DOC
    )
    return dict(result.generations[0][0].generation_info or {})


def _li_text(engine: FakeEngine, question: str, settings: dict[str, Any]) -> dict[str, Any]:
    llm = li.QLLM(engine=engine, **{"read_once": True, **settings})
    return dict(llm.complete(f"{DOC}\n\nQuestion: {question}\nAnswer:").raw or {})


def _li_chat(engine: FakeEngine, question: str, settings: dict[str, Any]) -> dict[str, Any]:
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content=DOC),
        ChatMessage(role=MessageRole.USER, content=question),
    ]
    return dict(li.QLLM(engine=engine, **{"read_once": True, **settings}).chat(messages).raw or {})


ASKS: dict[str, Ask] = {
    "langchain chat": _lc_chat,
    "langchain llm": _lc_text,
    "llamaindex complete": _li_text,
    "llamaindex chat": _li_chat,
}


@pytest.mark.parametrize("side", ASKS)
def test_second_question_reuses_the_memory(side: str) -> None:
    engine = FakeEngine()
    first = ASKS[side](engine, QUESTIONS[0], {})
    second = ASKS[side](engine, QUESTIONS[1], {})
    assert first["split_route"] == second["split_route"] != "direct"
    assert (first["memory_reused"], second["memory_reused"]) == (False, True)
    assert first["document_sha256"] == second["document_sha256"] == DOC_SHA
    assert [d.strip() for d in engine.reads] == [DOC]  # read once, for the first question
    assert [call.from_memory for call in engine.calls] == [True, True]
    assert [call.question for call in engine.calls] == list(QUESTIONS)
    # the whole prompt is counted: the question read now plus the document from memory
    stats = second["qllm"]
    assert stats["memory_tokens"] > 300 and stats["tokens_read"] < 30
    assert second["usage"]["input_tokens"] == stats["tokens_read"] + stats["memory_tokens"]


@pytest.mark.parametrize("side", ASKS)
def test_read_once_false_reads_the_document_per_question(side: str) -> None:
    engine = FakeEngine()
    metas = [ASKS[side](engine, q, {"read_once": False}) for q in QUESTIONS]
    assert [m["memory_reused"] for m in metas] == [None, None]
    assert not any("document_sha256" in m for m in metas)
    assert engine.reads == [] and engine.memories == {}
    assert [call.from_memory for call in engine.calls] == [False, False]
    assert all(
        call.document is not None and "ship number 39" in call.document for call in engine.calls
    )
    assert all(m["qllm"]["memory_tokens"] == 0 for m in metas)
    assert metas[1]["usage"]["input_tokens"] == metas[1]["qllm"]["tokens_read"] > 300


def test_another_document_is_read_again() -> None:
    engine = FakeEngine()
    chat = lc.ChatQLLM(engine=engine, read_once=True)
    metas = [
        chat.invoke(QUESTIONS[0], document=text).response_metadata
        for text in (DOC, OTHER_DOC, DOC, OTHER_DOC)
    ]
    assert [m["memory_reused"] for m in metas] == [False, False, True, True]
    assert engine.reads == [DOC, OTHER_DOC]
    assert metas[0]["document_sha256"] != metas[1]["document_sha256"]


def test_direct_route_uses_no_memory() -> None:
    engine = FakeEngine()
    for _ in range(2):
        meta = lc.ChatQLLM(engine=engine, read_once=True).invoke("Hello there").response_metadata
        assert meta["split_route"] == "direct"
        assert meta["memory_reused"] is None and "document_sha256" not in meta
    assert engine.reads == [] and [c.method for c in engine.calls] == ["stream_ids"] * 2


def test_mode_goes_to_the_read_not_to_the_question() -> None:
    engine = FakeEngine()
    chat = lc.ChatQLLM(engine=engine, mode="infllm", read_once=True)
    first = chat.invoke(QUESTIONS[0], document=DOC).response_metadata
    second = chat.invoke(QUESTIONS[1], document=DOC, mode="streaming").response_metadata
    third = chat.invoke(QUESTIONS[1], document=DOC).response_metadata
    assert list(engine.memories) == [(DOC, "infllm"), (DOC, "streaming")]
    assert all("mode" not in call.options for call in engine.calls)  # the memory has it
    assert [m["qllm"]["mode"] for m in (first, second, third)] == ["infllm", "streaming", "infllm"]
    assert [m["memory_reused"] for m in (first, second, third)] == [False, False, True]


def test_langchain_usage_reports_the_cached_document() -> None:
    engine = FakeEngine()
    chat = lc.ChatQLLM(engine=engine, read_once=True)
    first = chat.invoke(QUESTIONS[0], document=DOC)
    second = chat.invoke(QUESTIONS[1], document=DOC)
    assert first.usage_metadata is not None and second.usage_metadata is not None
    assert "input_token_details" not in first.usage_metadata  # read for this call
    memory_tokens = second.response_metadata["qllm"]["memory_tokens"]
    assert second.usage_metadata.get("input_token_details") == {"cache_read": memory_tokens}
    assert second.usage_metadata["input_tokens"] > memory_tokens > 300
    llm_info = lc.QLLM(engine=engine, read_once=True).generate([QUESTIONS[0]], document=DOC)
    info = llm_info.generations[0][0].generation_info or {}
    assert info["usage_metadata"]["input_token_details"] == {"cache_read": memory_tokens}


def test_streams_and_async_calls_reuse_the_memory() -> None:
    engine = FakeEngine()
    chat = lc.ChatQLLM(engine=engine, read_once=True)
    chunks = list(chat.stream(QUESTIONS[0], document=DOC))
    assert chunks[-1].response_metadata["memory_reused"] is False

    async def main() -> list[Any]:
        streamed = [c async for c in chat.astream(QUESTIONS[1], document=DOC)]
        invoked = await chat.ainvoke(QUESTIONS[1], document=DOC)
        return [streamed[-1].response_metadata, invoked.response_metadata]

    assert [m["memory_reused"] for m in asyncio.run(main())] == [True, True]
    llm = li.QLLM(engine=engine, read_once=True)
    *_, last = llm.stream_complete(QUESTIONS[0], document=DOC)
    assert last.raw is not None and last.raw["memory_reused"] is True
    assert len(engine.reads) == 1


def test_read_once_is_a_validated_setting() -> None:
    engine = FakeEngine()
    assert lc.ChatQLLM(engine=engine).read_once is False  # the per-question read by default
    assert li.QLLM(engine=engine).read_once is False
    assert lc.ChatQLLM(engine=engine, read_once=False)._identifying_params["read_once"] is False
    with pytest.raises(InvalidOptionError, match="did you mean 'read_once'"):
        lc.ChatQLLM(engine=engine, read_onse=False)
    with pytest.raises(InvalidOptionError, match="read_once"):  # a setting, not a call option
        lc.ChatQLLM(engine=engine).invoke(QUESTIONS[0], document=DOC, read_once=False)


def test_request_records_the_memory_it_used() -> None:
    engine = FakeEngine()
    settings = li.QLLM(engine=engine, read_once=True)
    options = call_options(settings, None, {"question": QUESTIONS[0], "document": DOC})
    request = text_request(engine, "fake", "", options)
    assert isinstance(request, Request) and request.uses_memory
    assert request.memory_use.memory is None  # nothing is read before start
    assert engine.reads == []
    request.run()
    memory = request.memory_use.memory
    assert isinstance(memory, FakeMemory) and memory.document == DOC
    given = text_request(engine, "fake", "", options)
    kept = FakeMemory(OTHER_DOC, "qllm", 10, "kept")
    given.use_memory(kept)  # a memory the caller kept: used as it is
    answer = given.run()
    assert engine.calls[-1].document == OTHER_DOC
    assert given.metadata(answer)["memory_reused"] is True
    assert given.metadata(answer)["document_sha256"] == "kept"
    assert engine.reads == [DOC]


# --- LangChain's whole-document chain and reader tool -----------------------------------


def test_reader_tool_reads_its_document_once_for_ten_calls(tmp_path: Any) -> None:
    engine = FakeEngine()
    tool = create_document_reader_tool(lc.ChatQLLM(engine=engine, read_once=True))
    path = tmp_path / "log.txt"
    path.write_text(DOC, encoding="utf-8")
    artifacts = []
    for n in range(10):
        arguments: dict[str, Any] = {"question": f"When was ship number {n} logged?"}
        arguments.update({"path": str(path)} if n % 2 else {"document": DOC})
        message = tool.invoke(
            {"type": "tool_call", "id": f"call-{n}", "name": tool.name, "args": arguments}
        )
        artifacts.append(message.artifact)
    reused = [a["response_metadata"]["memory_reused"] for a in artifacts]
    assert reused == [False] + [True] * 9
    assert engine.reads == [DOC]
    assert len(engine.calls) == 10 and all(call.from_memory for call in engine.calls)


def test_reader_tool_with_read_once_false_reads_every_time() -> None:
    engine = FakeEngine()
    tool = create_document_reader_tool(lc.ChatQLLM(engine=engine, read_once=False))
    for n in range(3):
        tool.invoke({"question": f"When was ship number {n} logged?", "document": DOC})
    assert engine.reads == [] and not any(call.from_memory for call in engine.calls)
    assert len(engine.calls) == 3


def test_document_chain_reads_its_document_once() -> None:
    engine = FakeEngine()
    chain = create_document_qa_chain(lc.ChatQLLM(engine=engine, read_once=True))
    outputs = [chain.invoke({"document": DOC, "question": q}) for q in QUESTIONS]
    later = asyncio.run(chain.ainvoke({"document": DOC, "question": QUESTIONS[0]}))
    reused = [o["message"].response_metadata["memory_reused"] for o in [*outputs, later]]
    assert reused == [False, True, True]
    assert engine.reads == [DOC]
    assert outputs[1]["evidence"]  # evidence still maps onto the document
