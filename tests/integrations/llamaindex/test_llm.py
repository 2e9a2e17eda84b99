"""QLLM as a LlamaIndex LLM: metadata, the four call styles, async, usage in ``raw``."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fakes import keep_gate_open
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.prompts import PromptTemplate

from qllm_core.config import QLLMConfig
from qllm_integrations.llamaindex import QLLM

DOC = "The vault code is 4812. " * 20
PROMPT = f"Context information is below.\n{DOC}\nQuery: What is the vault code?\nAnswer: "


def test_metadata_reports_the_engines_limit(llm, fake_engine):
    meta = llm.metadata
    assert meta.context_window == fake_engine.max_input_tokens == 1_048_576
    assert meta.is_chat_model
    assert meta.model_name == "fake-model"
    assert meta.num_output == 256


def test_engine_is_not_loaded_on_construction(monkeypatch, make_engine):
    import qllm_integrations.engines as engines

    calls = []
    monkeypatch.setattr(engines, "get_engine", lambda *a, **k: calls.append(a) or make_engine())
    llm = QLLM(max_new_tokens=32)
    assert llm.to_payload()["num_output"] == 32
    assert llm.metadata.num_output == 32
    assert llm.metadata.context_window == QLLMConfig.default_for(None).max_input_tokens
    assert calls == []  # the metadata is known without loading the model


def test_complete_splits_llamaindex_template(llm, fake_engine):
    response = llm.complete(PROMPT)
    call = fake_engine.calls[-1]
    assert call.question == "What is the vault code?"
    assert call.document.startswith("Context information is below.")
    assert "Query:" not in call.document
    assert response.text == fake_engine.reply
    usage = response.raw["usage"]
    assert usage["input_tokens"] > 100 and usage["output_tokens"] == 9
    assert response.raw["split_route"] == "pattern"


def test_explicit_question_and_options(llm, fake_engine):
    llm.complete(
        DOC,
        question="Which code?",
        max_tokens=3,
        stop=["x"],
        temperature=0.5,
        repetition_penalty=1.2,
        no_repeat_ngram_size=3,
    )
    call = fake_engine.calls[-1]
    assert call.question == "Which code?" and call.document == DOC
    assert call.options["max_new_tokens"] == 3
    assert call.options["stop"] == ["x"] and call.options["temperature"] == 0.5
    assert call.options["repetition_penalty"] == 1.2
    assert call.options["no_repeat_ngram_size"] == 3


def test_stream_complete_puts_usage_on_the_last_chunk(llm, fake_engine):
    chunks = list(llm.stream_complete(PROMPT))
    assert "".join(c.delta for c in chunks) == fake_engine.reply
    assert chunks[-1].text == fake_engine.reply
    assert all(c.raw is None for c in chunks[:-1])
    assert chunks[-1].raw["usage"]["output_tokens"] == len(chunks)


def test_chat_uses_system_message_as_document(llm, fake_engine):
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content=DOC),
        ChatMessage(role=MessageRole.USER, content="What is the vault code?"),
    ]
    response = llm.chat(messages)
    assert response.message.role == MessageRole.ASSISTANT
    assert response.message.content == fake_engine.reply
    assert fake_engine.calls[-1].question == "What is the vault code?"
    assert fake_engine.calls[-1].document.strip() == DOC.strip()
    assert response.raw["usage"]["input_tokens"] > 0


def test_chat_with_context_inside_the_user_message(llm, fake_engine):
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content="You are an expert Q&A system."),
        ChatMessage(role=MessageRole.USER, content=PROMPT),
    ]
    llm.chat(messages)
    call = fake_engine.calls[-1]
    assert call.question == "What is the vault code?"
    assert "vault code is 4812" in call.document


def test_stream_chat(llm, fake_engine):
    messages = [ChatMessage(role=MessageRole.USER, content=PROMPT)]
    chunks = list(llm.stream_chat(messages))
    assert "".join(c.delta for c in chunks) == fake_engine.reply
    assert chunks[-1].message.content == fake_engine.reply
    assert chunks[-1].raw["usage"]["output_tokens"] > 0


def test_predict_passes_the_templates_own_question(llm, fake_engine):
    template = PromptTemplate("Read this:\n{context_str}\nQuery: {query_str}\nAnswer: ")
    out = llm.predict(template, context_str=DOC, query_str="What is the code?")
    assert out == fake_engine.reply
    call = fake_engine.calls[-1]
    assert call.document == DOC and call.question == "What is the code?"


def test_token_counter_reads_usage_instead_of_tokenizing(fake_engine):
    counted = []
    counter = TokenCountingHandler(tokenizer=lambda text: counted.append(text) or text.split())
    llm = QLLM(engine=fake_engine, callback_manager=CallbackManager([counter]))
    response = llm.complete(PROMPT)
    list(llm.stream_complete(PROMPT))
    assert counter.prompt_llm_token_count == 2 * response.raw["usage"]["input_tokens"]
    assert counter.completion_llm_token_count == 2 * response.raw["usage"]["output_tokens"]
    assert counted == []


def test_async_calls_do_not_block_the_event_loop(make_engine):
    gate = threading.Event()
    engine = make_engine(loop_gate=gate)
    llm = QLLM(engine=engine)
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content=DOC),
        ChatMessage(role=MessageRole.USER, content="What is the vault code?"),
    ]

    async def main():
        # the engine waits for the loop before each piece: a blocking call would fail
        task = asyncio.create_task(keep_gate_open(gate))
        completed = await llm.acomplete(PROMPT)
        chatted = await llm.achat(messages)
        deltas = [r.delta async for r in await llm.astream_complete(PROMPT)]
        chat_deltas = [r.delta async for r in await llm.astream_chat(messages)]
        task.cancel()
        return completed, chatted, deltas, chat_deltas

    completed, chatted, deltas, chat_deltas = asyncio.run(main())
    assert completed.text == chatted.message.content == engine.reply
    assert "".join(deltas) == "".join(chat_deltas) == engine.reply


def test_async_stream_stops_the_engine_when_abandoned(make_engine):
    engine = make_engine(delay=0.01, reply=" ".join(["word"] * 200))
    llm = QLLM(engine=engine, max_new_tokens=500)

    async def main():
        stream = await llm.astream_complete(PROMPT)
        async for _ in stream:
            break
        await stream.aclose()
        await asyncio.sleep(0.1)

    asyncio.run(main())
    with engine._lock:  # released: the worker thread closed the engine's stream
        pass


def test_empty_question_raises(llm):
    from qllm_core.errors import EmptyInputError

    with pytest.raises(EmptyInputError):
        llm.complete(DOC, question="  ")
