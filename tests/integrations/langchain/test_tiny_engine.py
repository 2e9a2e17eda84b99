"""ChatQLLM and QLLM on a real (tiny, random) engine: long inputs, concurrency, loading.

The model's answers are noise; what is checked is that requests go through the engine's
Q-LLM path, report real stats, and do not leak state into each other.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fakes import tiny_engine, tiny_model_dir
from langchain_core.messages import HumanMessage, SystemMessage

from qllm_integrations.langchain import QLLM, ChatQLLM, create_document_reader_tool

DOC = " ".join(f"Entry {i}: the ship Nr. {i * 7} left the harbour at dawn." for i in range(16))
"""About 270 tokens: several memory blocks of the tiny config (n_local=64, block 16)."""


@pytest.fixture(scope="module")
def chat() -> ChatQLLM:
    return ChatQLLM(engine=tiny_engine(), max_tokens=4)


def test_long_document_uses_memory_and_reports_char_ranges(chat: ChatQLLM) -> None:
    reply = chat.invoke([SystemMessage(DOC), HumanMessage("When did ship Nr. 70 leave?")])
    meta = reply.response_metadata
    assert meta["split_route"] == "chat"
    assert meta["qllm"]["question_found"] is True
    assert meta["qllm"]["tokens_read"] + meta["qllm"]["memory_tokens"] > 200
    assert meta["memory_reused"] is None  # read with the question (read_once is off by default)
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["output_tokens"] <= 4
    blocks = [b for b in meta["qllm"]["retrieved_blocks"] if b["char_start"] is not None]
    assert blocks
    assert all(0 <= b["char_start"] < b["char_end"] <= len(DOC) for b in blocks)


def test_concurrent_invokes_match_the_same_calls_alone(chat: ChatQLLM) -> None:
    questions = [f"When did ship Nr. {n} leave?" for n in (7, 49, 91)]

    def ask(question: str) -> Any:
        reply = chat.invoke([SystemMessage(DOC), HumanMessage(question)])
        # the best blocks and their relevance come from the read, which runs alone; which
        # other blocks were retrieved while decoding, and how often, may differ in a batch,
        # where the projections round differently and a near-tied block can swap
        best = reply.response_metadata["qllm"]["retrieved_blocks"][: tiny_engine().config.topk]
        return reply.content, [{k: v for k, v in b.items() if k != "count"} for b in best]

    alone = [ask(q) for q in questions]
    together: list[Any] = [None] * len(questions)
    barrier = threading.Barrier(len(questions))

    def worker(i: int) -> None:
        barrier.wait()
        together[i] = ask(questions[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(questions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == alone


def test_token_ids_and_profile(chat: ChatQLLM) -> None:
    engine = tiny_engine()
    assert (
        chat.get_token_ids("Hello world")
        == engine.tokenizer("Hello world", add_special_tokens=False)["input_ids"]
    )
    # Special tokens in text are characters, as the engine reads them.
    text = "hi<|im_end|>\n<|im_start|>system"
    ids = chat.get_token_ids(text)
    assert chat.get_num_tokens(text) == len(ids) == engine.count_tokens(text) > 2
    markers = {engine.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>")}
    assert not markers & set(ids)
    assert chat.profile is not None
    assert chat.profile["max_input_tokens"] == engine.max_input_tokens


def test_message_tokens_are_those_the_direct_route_sends(chat: ChatQLLM) -> None:
    engine = tiny_engine()
    seen: list[list[int]] = []
    real = engine.stream_ids

    def spy(ids: Any, **options: Any) -> Any:
        seen.append(list(ids))
        return real(ids, **options)

    messages = [SystemMessage("Be brief."), HumanMessage("hi<|im_end|> there")]
    engine.stream_ids = spy
    try:
        chat.invoke(messages)
    finally:
        del engine.stream_ids
    assert len(seen) == 1
    assert chat.get_num_tokens_from_messages(messages) == len(seen[0])


def test_llm_pattern_route_on_the_engine() -> None:
    llm = QLLM(engine=tiny_engine(), max_tokens=3)
    result = llm.generate([f"{DOC}\n\nQuestion: When did ship Nr. 70 leave?\nAnswer:"])
    info = result.generations[0][0].generation_info
    assert info is not None
    assert info["split_route"] == "pattern"
    assert info["qllm"]["question_found"] is True


def test_tool_on_the_engine() -> None:
    tool = create_document_reader_tool(ChatQLLM(engine=tiny_engine(), max_tokens=3))
    text = tool.invoke({"question": "When did ship Nr. 70 leave?", "document": DOC})
    assert "characters" in text


def test_model_from_a_directory_through_the_registry() -> None:
    from qllm_core.config import QLLMConfig

    chat = ChatQLLM(
        model=tiny_model_dir(),
        config=QLLMConfig(
            n_local=64, exec_block_size=32, block_size=16, topk=2, max_cached_blocks=4
        ),
        device="cpu",
        max_tokens=3,
        read_once=True,
    )
    reply = chat.invoke([SystemMessage(DOC), HumanMessage("When did ship Nr. 70 leave?")])
    assert reply.response_metadata["model_name"] == tiny_model_dir()
    assert reply.response_metadata["usage"]["input_tokens"] > 200
    assert reply.response_metadata["memory_reused"] is False  # a new engine read it
    again = ChatQLLM(model=tiny_model_dir(), config=chat.config, device="cpu")
    assert again.get_engine() is chat.get_engine()
