"""The read's progress reaches people (a bar, also in notebooks) and apps (callbacks, events).

On the real engine with a tiny model: a listener hears the read advance chunk by chunk
(and the re-read, timed in the stats); LangChain callbacks receive it as custom events of
the model's run, before the first token; LlamaIndex event handlers receive
``ReadProgressEvent``s; ``progress=False`` silences both.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import types
from typing import Any
from uuid import UUID

import pytest

pytest.importorskip("llama_index.core")

from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.messages import HumanMessage, SystemMessage  # noqa: E402
from langchain_core.runnables import RunnableLambda  # noqa: E402
from llama_index.core import Document  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from tiny_models import TINY_ENGINE_CONFIG, make_tiny_model  # noqa: E402

from qllm_core.progress import ProgressEvent, prefill_progress, report_progress  # noqa: E402
from qllm_integrations import langchain as lc  # noqa: E402
from qllm_integrations import llamaindex as li  # noqa: E402

DOC = " ".join(f"Entry {i}: the ship Nr. {i * 7} left the harbour at dawn." for i in range(18))
"""About 330 tokens with the prompt: three prefill chunks of the tiny config (128 tokens)."""
QUESTION = "When did ship Nr. 70 leave?"


def _check_phase(events: list[ProgressEvent], phase: str) -> list[ProgressEvent]:
    """The phase's first read: from 0 to all its tokens, in order, in several steps."""
    mine = [e for e in events if e.phase == phase]
    starts = [i for i, e in enumerate(mine) if e.done == 0] + [len(mine)]
    first = mine[starts[0] : starts[1]] if len(starts) > 1 else []
    assert len(first) >= 3, mine
    assert first[-1].done == first[-1].total and first[-1].fraction == 1
    assert [e.done for e in first] == sorted(e.done for e in first)
    return first


def test_a_listener_hears_the_read_advance(real_tiny_engine: Any) -> None:
    events: list[ProgressEvent] = []
    with report_progress(events.append):
        answer = real_tiny_engine.answer(DOC, QUESTION, max_new_tokens=2)
    reads = _check_phase(events, "read")
    assert reads[-1].total == answer.stats.tokens_read
    real_tiny_engine.answer(DOC, QUESTION, max_new_tokens=2)
    assert len(events) == len(reads)  # outside the block nobody listens


def test_the_reread_is_reported_and_timed(tokenizer: Any) -> None:
    from qllm_core.engine import QLLMEngine

    model = make_tiny_model("llama", vocab_size=len(tokenizer))
    config = TINY_ENGINE_CONFIG.replace(reread_tokens=64)
    engine = QLLMEngine(model, tokenizer, config=config, progress=False)
    events: list[ProgressEvent] = []
    with report_progress(events.append):
        answer = engine.answer(DOC, QUESTION, max_new_tokens=2)
    _check_phase(events, "read")
    rereads = [e for e in events if e.phase == "reread"]
    assert rereads and rereads[-1].done == rereads[-1].total
    stats = answer.stats
    assert 0 < stats.reread_seconds < stats.prefill_seconds
    assert stats.phases()["reread"]["seconds"] == stats.reread_seconds


def test_a_failing_listener_does_not_stop_the_read(
    real_tiny_engine: Any, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[ProgressEvent] = []

    def broken(event: ProgressEvent) -> None:
        calls.append(event)
        raise RuntimeError("the display went away")

    with caplog.at_level(logging.WARNING), report_progress(broken):
        answer = real_tiny_engine.answer(DOC, QUESTION, max_new_tokens=2)
    assert answer.stats.tokens_generated >= 1
    assert len(calls) == 1 and "progress listener" in caplog.text


def test_the_bar_shows_in_a_notebook_and_can_be_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = types.SimpleNamespace(config={"IPKernelApp": {}})
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: kernel  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    shown = prefill_progress(100)  # stderr is not a terminal under pytest
    assert not shown.disable  # type: ignore[attr-defined]
    shown.close()
    with report_progress(bar=False):
        hidden = prefill_progress(100, enabled=True)
    assert hidden.disable  # type: ignore[attr-defined]
    hidden.close()


class Recorder(BaseCallbackHandler):
    """Records the runs started, the custom events and the tokens, in order."""

    def __init__(self) -> None:
        self.runs: list[UUID] = []
        self.seen: list[tuple[str, Any, UUID | None]] = []

    def on_chat_model_start(
        self, serialized: Any, messages: Any, *, run_id: UUID, **_: Any
    ) -> None:
        self.runs.append(run_id)

    def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: UUID, **_: Any) -> None:
        self.runs.append(run_id)

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, **_: Any) -> None:
        self.runs.append(run_id)

    def on_llm_new_token(self, token: str, **_: Any) -> None:
        self.seen.append(("token", token, None))

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **_: Any) -> None:
        self.seen.append((name, data, run_id))

    def progress(self) -> list[ProgressEvent]:
        """The progress events received, each checked to belong to a run started."""
        events = []
        for name, data, run_id in self.seen:
            if name == lc.PROGRESS_EVENT:
                assert run_id in self.runs
                events.append(_event(data))
        return events


def _event(data: dict[str, Any]) -> ProgressEvent:
    return ProgressEvent(**{k: v for k, v in data.items() if k != "fraction"})


MESSAGES = [SystemMessage(DOC), HumanMessage(QUESTION)]
PROMPT = f"{DOC}\n\nQuestion: {QUESTION}\nAnswer:"
LANGCHAIN_CALLS = {
    "chat invoke": lambda m, c: m.invoke(MESSAGES, config=c),
    "chat ainvoke": lambda m, c: asyncio.run(m.ainvoke(MESSAGES, config=c)),
    "chat invoke, streaming": lambda m, c: _chain(m).invoke(MESSAGES, config=c),
    "chat stream in a chain": lambda m, c: list(_chain(m).stream(MESSAGES, config=c)),
    "chat astream in a chain": lambda m, c: asyncio.run(_collect(_chain(m).astream(MESSAGES, c))),
    "llm invoke": lambda m, c: m.invoke(PROMPT, config=c),
    "llm ainvoke": lambda m, c: asyncio.run(m.ainvoke(PROMPT, config=c)),
    "llm stream in a chain": lambda m, c: list(_chain(m).stream(PROMPT, config=c)),
}


def _chain(model: Any) -> Any:
    return RunnableLambda(lambda x: x) | model


async def _collect(chunks: Any) -> list[Any]:
    return [chunk async for chunk in chunks]


@pytest.mark.parametrize("call", LANGCHAIN_CALLS)
def test_langchain_callbacks_receive_the_progress(call: str, real_tiny_engine: Any) -> None:
    cls = lc.QLLM if call.startswith("llm") else lc.ChatQLLM
    model = cls(engine=real_tiny_engine, max_tokens=3, streaming="streaming" in call)
    recorder = Recorder()
    LANGCHAIN_CALLS[call](model, {"callbacks": [recorder]})
    _check_phase(recorder.progress(), "read")
    kinds = [name for name, _, _ in recorder.seen]
    if "token" in kinds:  # the read is reported before the answer streams
        assert kinds.index("token") > max(i for i, k in enumerate(kinds) if k != "token")


def test_astream_events_show_the_progress(real_tiny_engine: Any) -> None:
    chain = _chain(lc.ChatQLLM(engine=real_tiny_engine, max_tokens=3))

    async def events() -> list[Any]:
        return [e async for e in chain.astream_events(MESSAGES, version="v2")]

    shown = [e for e in asyncio.run(events()) if e["event"] == "on_custom_event"]
    assert {e["name"] for e in shown} == {lc.PROGRESS_EVENT}
    _check_phase([_event(e["data"]) for e in shown], "read")


def test_langchain_progress_can_be_turned_off(real_tiny_engine: Any) -> None:
    recorder = Recorder()
    chat = lc.ChatQLLM(engine=real_tiny_engine, max_tokens=2, progress=False)
    chat.invoke(MESSAGES, config={"callbacks": [recorder]})
    assert recorder.runs and recorder.progress() == []


class Collector(BaseEventHandler):
    """Keeps the quickllama read events LlamaIndex dispatches."""

    events: list[Any] = []

    def handle(self, event: Any, **_: Any) -> None:
        if isinstance(event, li.ReadProgressEvent):
            self.events.append(event)


@pytest.fixture
def collector() -> Any:
    handler = Collector(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


def _as_progress(events: list[Any]) -> list[ProgressEvent]:
    return [ProgressEvent(e.phase, e.done, e.total, e.seconds) for e in events]


def test_llamaindex_events_carry_the_progress(real_tiny_engine: Any, collector: Any) -> None:
    llm = li.QLLM(engine=real_tiny_engine, max_new_tokens=2)
    llm.complete(f"{DOC}\nQuery: {QUESTION}\nAnswer: ")
    _check_phase(_as_progress(collector.events), "read")
    assert collector.events[0].class_name() == "QLLMReadProgressEvent"


def test_llamaindex_query_engine_reports_reading_its_memory(
    real_tiny_engine: Any, collector: Any
) -> None:
    llm = li.QLLM(engine=real_tiny_engine, max_new_tokens=2, read_once=True)
    engine = li.WholeDocumentQueryEngine.from_documents([Document(text=DOC + " unique")], llm=llm)
    engine.query(QUESTION)
    _check_phase(_as_progress(collector.events), "read")
    quiet = li.QLLM(engine=real_tiny_engine, max_new_tokens=2, progress=False)
    collector.events.clear()
    quiet.complete(f"{DOC}\nQuery: {QUESTION}\nAnswer: ")
    assert collector.events == []
