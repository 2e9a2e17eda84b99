"""An async consumer that stops during a long read stops the read (both providers)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from fakes import tiny_engine

from qllm_core.engine import QLLMEngine
from qllm_core.progress import ProgressEvent, report_progress
from qllm_integrations.langchain import ChatQLLM
from qllm_integrations.llamaindex import QLLM as IndexQLLM

DOCUMENT = " ".join(f"Sentence {i} is about topic {i % 7}." for i in range(400))
QUESTION = "Which topic is sentence 5 about?"


def slow_reader() -> QLLMEngine:
    """The tiny engine reading in chunks of 32 tokens: a read of many steps."""
    shared = tiny_engine()
    config = shared.config.replace(prefill_chunk_size=32)
    return QLLMEngine(shared.model, shared.tokenizer, config=config, progress=False)


def lc_stream(engine: QLLMEngine) -> AsyncIterator[Any]:
    chat = ChatQLLM(engine=engine, max_new_tokens=4, progress=False)
    return chat.astream(QUESTION, document=DOCUMENT)


def li_stream(engine: QLLMEngine) -> AsyncIterator[Any]:
    llm = IndexQLLM(engine=engine, max_new_tokens=4, progress=False)

    async def gen() -> AsyncIterator[Any]:
        async for response in await llm.astream_complete(DOCUMENT, question=QUESTION):
            yield response

    return gen()


@pytest.mark.asyncio
@pytest.mark.parametrize("open_stream", [lc_stream, li_stream], ids=["langchain", "llamaindex"])
async def test_stopping_during_the_read_stops_the_read(
    open_stream: Callable[[QLLMEngine], AsyncIterator[Any]],
) -> None:
    engine = slow_reader()
    events: list[ProgressEvent] = []
    reading = threading.Event()

    def listen(event: ProgressEvent) -> None:
        events.append(event)
        if event.phase == "read" and event.done:
            reading.set()

    with report_progress(listen):
        stream = open_stream(engine)
        first = asyncio.ensure_future(stream.__anext__())
        assert await asyncio.to_thread(reading.wait, 60)
        first.cancel()  # the consumer gives up during the read
        await asyncio.gather(first, return_exceptions=True)
        await stream.aclose()
    for _ in range(600):  # the read's thread ends soon after
        if not _stream_threads():
            break
        await asyncio.sleep(0.05)
    read = [e for e in events if e.phase == "read"]
    assert read[-1].done < read[-1].total  # stopped between chunks, not at the end
    engine.answer(DOCUMENT, QUESTION, max_new_tokens=2)  # and the engine is free


def _stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "quickllama-stream" and t.is_alive()]
