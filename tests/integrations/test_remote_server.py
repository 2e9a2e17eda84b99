"""The providers with ``base_url``, against a real ``quickllama serve`` process.

One server (tiny random model, an API key) serves the module; each provider over it must
answer what the same provider answers over an in-process engine with the same weights
(greedy decoding): the same text, streamed or not, and the same metadata (evidence spans,
scores to 1e-4, usage, route, memory reuse). Held streams fill its queue; a port nothing
listens on is a stopped server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fakes import tiny_model_dir
from langchain_core.messages import HumanMessage, SystemMessage
from llama_index.core import Document
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from server_process import ServerProcess, free_port, start_server

from qllm_core.errors import ConfigError, EmptyInputError
from qllm_integrations.langchain import QLLM, ChatQLLM
from qllm_integrations.llamaindex import QLLM as IndexQLLM
from qllm_integrations.llamaindex import WholeDocumentQueryEngine
from qllm_integrations.remote import (
    InvalidAPIKeyError,
    ServerBusyError,
    ServerError,
    ServerUnavailableError,
)

KEY = "remote-test-key"
AUTHORIZATION = {"Authorization": f"Bearer {KEY}"}
MAX_QUEUE = 2
"""The server's queue: one request left over by the test before (a stream's place is given
back just after its last byte) never makes another test's request busy."""
SETTINGS: dict[str, Any] = {"max_new_tokens": 5, "progress": False}
WORDS = ("red", "blue", "green", "amber", "violet", "silver", "golden", "black")
DOCUMENT = "\n".join(
    f"Room {i} holds the {word} key, kept in drawer {i * 7 % 13}."
    for i, word in enumerate(WORDS * 3)
)
"""About 400 tokens: read by the request (route ``explicit``)."""
LONG_CHAT_DOCUMENT = DOCUMENT * 4
"""Over the tiny config's 1024-token local window: a chat the server splits (route ``chat``)."""
QUESTION = "Which room holds the violet key?"
TIMINGS = ("prefill_seconds", "decode_seconds", "reread_seconds", "seconds")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with start_server("--api-key", KEY, "--max-queue", str(MAX_QUEUE)) as running:
        yield running


@pytest.fixture(scope="module")
def base_url(server: ServerProcess) -> str:
    return f"{server.base_url}/v1"


def both(cls: type, base_url: str, **settings: Any) -> tuple[Any, Any]:
    """``cls`` over an in-process engine on the server's weights, and over the server."""
    settings = {**SETTINGS, **settings}
    local = cls(model=tiny_model_dir(), **settings)
    remote = cls(base_url=base_url, api_key=KEY, **settings)
    return local, remote


def ask(llm: ChatQLLM | IndexQLLM) -> str:
    """The answer to :data:`QUESTION` alone (``invoke`` or ``complete``)."""
    if isinstance(llm, ChatQLLM):
        return str(llm.invoke(QUESTION).content)
    return llm.complete(QUESTION).text


def sources(response: Any) -> list[tuple[int | None, int | None, float]]:
    """A query engine response's source nodes: char span and score (to 1e-4)."""
    return [
        (n.node.start_char_idx, n.node.end_char_idx, round(n.score or 0.0, 4))
        for n in response.source_nodes
    ]


def comparable(metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata as JSON, less what differs between two runs (the name, the timings)."""
    data = json.loads(json.dumps(metadata))
    data.pop("model_name")
    data["qllm"] = {k: v for k, v in data["qllm"].items() if k not in TIMINGS}
    return data  # type: ignore[no-any-return]


def assert_close(remote: Any, local: Any, where: str = "metadata") -> None:
    """Equal, floats to 1e-4, nested dicts and lists included."""
    if isinstance(local, dict):
        assert isinstance(remote, dict) and remote.keys() == local.keys(), where
        for key in local:
            assert_close(remote[key], local[key], f"{where}.{key}")
    elif isinstance(local, list):
        assert isinstance(remote, list) and len(remote) == len(local), where
        for i, (r, item) in enumerate(zip(remote, local, strict=True)):
            assert_close(r, item, f"{where}[{i}]")
    elif isinstance(local, float) and not isinstance(local, bool):
        assert math.isclose(remote, local, abs_tol=1e-4), f"{where}: {remote} != {local}"
    else:
        assert remote == local, f"{where}: {remote!r} != {local!r}"


def assert_same_metadata(remote: dict[str, Any], local: dict[str, Any]) -> None:
    assert_close(comparable(remote), comparable(local))


def test_chat_model_answers_as_over_a_local_engine(server: ServerProcess, base_url: str) -> None:
    local, remote = both(ChatQLLM, base_url)
    expected = local.invoke(QUESTION, document=DOCUMENT)
    assert expected.response_metadata["evidence"]  # the comparison below compares passages
    got = remote.invoke(QUESTION, document=DOCUMENT)
    assert got.content == expected.content
    assert_same_metadata(got.response_metadata, expected.response_metadata)
    assert got.response_metadata["model_name"] == server.model
    assert got.usage_metadata == expected.usage_metadata

    chunks = list(remote.stream(QUESTION, document=DOCUMENT))
    assert "".join(str(c.content) for c in chunks) == expected.content
    assert len([c for c in chunks if c.content]) > 1  # streamed, not one piece
    assert_same_metadata(chunks[-1].response_metadata, expected.response_metadata)

    short = [SystemMessage("Answer briefly."), HumanMessage("Hello, who are you?")]
    direct = remote.invoke(short)
    assert direct.content == local.invoke(short).content
    assert direct.response_metadata["split_route"] == "direct"


def test_async_chat_answers_as_the_sync_one(base_url: str) -> None:
    local, remote = both(ChatQLLM, base_url)
    expected = local.invoke(QUESTION, document=DOCUMENT)

    async def run() -> tuple[Any, list[Any]]:
        answer = await remote.ainvoke(QUESTION, document=DOCUMENT)
        chunks = [c async for c in remote.astream(QUESTION, document=DOCUMENT)]
        return answer, chunks

    answer, chunks = asyncio.run(run())
    assert answer.content == expected.content
    assert "".join(str(c.content) for c in chunks) == expected.content
    assert_same_metadata(chunks[-1].response_metadata, expected.response_metadata)


def test_text_llm_answers_as_over_a_local_engine(base_url: str) -> None:
    local, remote = both(QLLM, base_url)
    prompt = f"{LONG_CHAT_DOCUMENT}\n\nQuestion: {QUESTION}\nAnswer:"  # split by the label
    expected = local.generate([prompt]).generations[0][0]
    got = remote.generate([prompt]).generations[0][0]
    assert got.text == expected.text
    info, expected_info = dict(got.generation_info), dict(expected.generation_info)
    assert info.pop("usage_metadata") == expected_info.pop("usage_metadata")
    assert_same_metadata(info, expected_info)
    assert info["split_route"] == "pattern"
    assert "".join(remote.stream(prompt)) == expected.text


def test_llamaindex_llm_answers_as_over_a_local_engine(base_url: str) -> None:
    local, remote = both(IndexQLLM, base_url)
    expected = local.complete("", question=QUESTION, document=DOCUMENT)
    got = remote.complete("", question=QUESTION, document=DOCUMENT)
    assert got.text == expected.text
    assert_same_metadata(got.raw, expected.raw)
    streamed = list(remote.stream_complete("", question=QUESTION, document=DOCUMENT))
    assert streamed[-1].text == expected.text
    assert_same_metadata(streamed[-1].raw, expected.raw)

    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content=LONG_CHAT_DOCUMENT),
        ChatMessage(role=MessageRole.USER, content=QUESTION),
    ]
    chat = remote.chat(messages)
    assert chat.message.content == local.chat(messages).message.content
    assert chat.raw["split_route"] == "chat"
    achat = asyncio.run(remote.achat(messages))
    assert achat.message.content == chat.message.content


def test_query_engine_over_a_remote_llm(base_url: str) -> None:
    local, remote = both(IndexQLLM, base_url, read_once=True)
    documents = [Document(text=DOCUMENT, metadata={"title": "rooms"})]
    expected = WholeDocumentQueryEngine.from_documents(documents, llm=local).query(QUESTION)
    engine = WholeDocumentQueryEngine.from_documents(documents, llm=remote)
    first, second = engine.query(QUESTION), engine.query("Which drawer keeps the red key?")
    assert str(first) == str(expected)
    spans = [(n.node.start_char_idx, n.node.end_char_idx) for n in first.source_nodes]
    assert spans and spans == [
        (n.node.start_char_idx, n.node.end_char_idx) for n in expected.source_nodes
    ]
    assert [round(n.score or 0, 4) for n in first.source_nodes] == [
        round(n.score or 0, 4) for n in expected.source_nodes
    ]
    assert second.metadata["memory_reused"] is True
    with pytest.raises(ConfigError, match="base_url"):  # a memory on disk needs a local engine
        engine.persist("unused")


def test_read_once_posts_the_document_once_and_reuses_its_memory(
    server: ServerProcess, base_url: str
) -> None:
    text = DOCUMENT + " This copy is read by this test only."  # posted here first
    local, remote = both(ChatQLLM, base_url, read_once=True)
    expected = local.invoke(QUESTION, document=text)
    first = remote.invoke("Which drawer keeps the red key?", document=text)
    again = remote.invoke(QUESTION, document=text)
    assert again.content == expected.content  # read question-free, then the question
    # as locally: the first question's document was read for it, the next one's was kept
    assert first.response_metadata["memory_reused"] is expected.response_metadata["memory_reused"]
    assert first.response_metadata["memory_reused"] is False
    assert "input_token_details" not in first.usage_metadata  # nothing read from a cache
    assert again.response_metadata["memory_reused"] is True
    cached = again.usage_metadata["input_token_details"]["cache_read"]
    assert cached == again.response_metadata["qllm"]["memory_tokens"] > 100
    digest = expected.response_metadata["document_sha256"]
    assert again.response_metadata["document_sha256"] == digest
    record = httpx.post(
        f"{base_url}/documents",
        json={"text": text},
        headers=AUTHORIZATION,
        timeout=60,
    ).json()
    assert record["sha256"] == digest and record["reused"] is True  # posted by the provider


def test_read_once_of_a_chat_the_server_splits(base_url: str) -> None:
    local, remote = both(ChatQLLM, base_url, read_once=True)
    messages = [SystemMessage(LONG_CHAT_DOCUMENT), HumanMessage(QUESTION)]
    expected = local.invoke(messages)
    first, second = remote.invoke(messages), remote.invoke(messages)
    assert second.content == expected.content
    assert first.response_metadata["split_route"] == "chat"
    assert second.response_metadata["memory_reused"] is True
    assert second.usage_metadata["input_token_details"]["cache_read"] > 1000


def test_token_counts_and_the_input_limit_come_from_the_server(base_url: str) -> None:
    local, remote = both(ChatQLLM, base_url)
    assert remote.get_token_ids(QUESTION) == local.get_token_ids(QUESTION)
    messages = [SystemMessage("Answer briefly."), HumanMessage(QUESTION)]
    assert remote.get_num_tokens_from_messages(messages) == local.get_num_tokens_from_messages(
        messages
    )
    index_local, index_remote = both(IndexQLLM, base_url)
    assert index_remote.metadata.context_window == index_local.metadata.context_window


def test_errors_of_the_server_are_the_same_named_errors(base_url: str) -> None:
    chat = ChatQLLM(base_url=base_url, api_key=KEY, **SETTINGS)
    llm = IndexQLLM(base_url=base_url, api_key=KEY, **SETTINGS)
    with pytest.raises(EmptyInputError, match="document is empty"):
        chat.invoke(QUESTION, document="   ")  # refused by the server's routing
    with pytest.raises(EmptyInputError, match="document is empty"):
        llm.complete("", question=QUESTION, document="  \n ")
    with pytest.raises(ServerError, match="not served here") as raised:
        ChatQLLM(base_url=base_url, api_key=KEY, model="another-model").invoke(QUESTION)
    assert raised.value.code == "model_not_found" and raised.value.status == 404


def test_a_wrong_api_key(base_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for provider in (ChatQLLM, IndexQLLM):
        with pytest.raises(InvalidAPIKeyError, match="QUICKLLAMA_API_KEY"):
            ask(provider(base_url=base_url, api_key="wrong", **SETTINGS))
    monkeypatch.setenv("QUICKLLAMA_API_KEY", KEY)
    chat = ChatQLLM(base_url=base_url, **SETTINGS)
    assert KEY not in repr(chat) and "api_key" not in chat._identifying_params
    assert ask(chat)


def test_a_stopped_server_is_unavailable() -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    for provider in (ChatQLLM, IndexQLLM):
        with pytest.raises(ServerUnavailableError, match="cannot reach"):
            ask(provider(base_url=base_url, max_retries=1, **SETTINGS))


def test_a_full_queue_is_busy_then_retried(base_url: str) -> None:
    hold = {"max_tokens": 20_000, "min_new_tokens": 20_000, "stream": True}
    hold["messages"] = [{"role": "user", "content": "Count to a thousand."}]
    with contextlib.ExitStack() as holding:
        for _ in range(MAX_QUEUE):  # admitted and answering: the queue is full
            held = holding.enter_context(
                httpx.stream(
                    "POST", f"{base_url}/chat/completions", json=hold, headers=AUTHORIZATION
                )
            )
            lines = held.iter_lines()
            holding.callback(lines.close)  # a dropped iterator would close the connection
            assert held.status_code == 200 and next(lines).startswith("data:")
        for provider in (ChatQLLM, IndexQLLM):
            with pytest.raises(ServerBusyError) as raised:
                ask(provider(base_url=base_url, api_key=KEY, max_retries=0, **SETTINGS))
            assert raised.value.retry_after is not None and raised.value.retry_after >= 1
        patient = ChatQLLM(base_url=base_url, api_key=KEY, max_retries=5, **SETTINGS)
        answers: list[str] = []
        waiting = threading.Thread(target=lambda: answers.append(ask(patient)))
        waiting.start()
        time.sleep(0.3)
    waiting.join(60)  # the held streams closed: a retry is admitted
    assert answers and answers[0]
