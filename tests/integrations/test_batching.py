"""The providers' concurrent calls go through the engine's scheduler: batched, same answers."""

from __future__ import annotations

import asyncio

from fakes import tiny_engine
from langchain_core.messages import HumanMessage, SystemMessage

from qllm_core import QLLMEngine
from qllm_integrations.langchain import ChatQLLM
from qllm_integrations.llamaindex import QLLM as LlamaQLLM

DOC = " ".join(f"Item {i} of the list is the colour number {i * 7 % 13}." for i in range(90))
QUESTIONS = [f"What is the colour number of item {i}?" for i in (3, 17, 42, 71)]


def _batched_engine() -> QLLMEngine:
    """A second engine on the tiny model, decoding up to four requests together."""
    shared = tiny_engine()
    config = shared.config.replace(max_batch_size=4)
    return QLLMEngine(shared.model, shared.tokenizer, config=config, progress=False)


def _messages(question: str) -> list:
    return [SystemMessage(DOC), HumanMessage(question)]


def test_langchain_batch_and_abatch_are_batched_with_the_answers_of_invoke() -> None:
    engine = _batched_engine()
    chat = ChatQLLM(engine=engine, max_tokens=8, min_new_tokens=8)
    alone = [chat.invoke(_messages(q)).content for q in QUESTIONS]
    engine.scheduler.largest_batch = 0
    together = chat.batch([_messages(q) for q in QUESTIONS], config={"max_concurrency": 4})
    assert [m.content for m in together] == alone
    assert engine.scheduler.largest_batch >= 2
    engine.scheduler.largest_batch = 0
    gathered = asyncio.run(chat.abatch([_messages(q) for q in QUESTIONS]))
    assert [m.content for m in gathered] == alone
    assert engine.scheduler.largest_batch >= 2


def test_llamaindex_concurrent_async_calls_are_batched() -> None:
    engine = _batched_engine()
    llm = LlamaQLLM(engine=engine, max_tokens=8, min_new_tokens=8)
    prompts = [f"{DOC}\n\nQuestion: {q}" for q in QUESTIONS]
    alone = [llm.complete(p).text for p in prompts]
    engine.scheduler.largest_batch = 0

    async def together() -> list[str]:
        answers = await asyncio.gather(*(llm.acomplete(p) for p in prompts))
        return [a.text for a in answers]

    assert asyncio.run(together()) == alone
    assert engine.scheduler.largest_batch >= 2
