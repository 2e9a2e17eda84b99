"""The providers' client of a quickllama server (qllm_integrations.remote), without a server.

Wire format, SSE parsing, error mapping, retries and the document-id cache, over
``httpx.MockTransport`` (a real httpx transport whose handler plays the server). The
providers against a real ``quickllama serve`` process are in test_remote_server.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from qllm_core.errors import ConfigError, EmptyInputError, InvalidOptionError
from qllm_core.results import AnswerStats, RetrievedBlock
from qllm_integrations.langchain import ChatQLLM
from qllm_integrations.llamaindex import QLLM
from qllm_integrations.remote import (
    InvalidAPIKeyError,
    RemoteClient,
    ServerBusyError,
    ServerError,
    ServerSpec,
    ServerUnavailableError,
    error_from_body,
    parse_retry_after,
    sse_data,
)
from qllm_integrations.request import stats_dict, stats_from_dict
from qllm_integrations.settings import ProviderSettings, call_options
from qllm_integrations.split import PromptSplit

Handler = Callable[[httpx.Request], httpx.Response]

STATS = AnswerStats(
    mode="qllm",
    tokens_read=7,
    tokens_generated=3,
    prefill_seconds=0.5,
    decode_seconds=0.25,
    question_found=True,
    retrieved_blocks=(RetrievedBlock(0, 128, 5, 0, 400, 0.625), RetrievedBlock(128, 256, 2)),
    memory_tokens=300,
)
METADATA = {  # as it comes off the wire (JSON: lists, not tuples)
    "model_name": "served",
    "model_provider": "quickllama",
    "finish_reason": "eos",
    "split_route": "explicit",
    "usage": {"input_tokens": 307, "output_tokens": 3, "total_tokens": 310},
    "evidence": [{"text": "x", "char_start": 0, "char_end": 400, "score": 0.625}],
    "memory_reused": True,
    "document_sha256": "ab" * 32,
    "qllm": json.loads(json.dumps(stats_dict(STATS))),
}


def client(handler: Handler, **spec: Any) -> RemoteClient:
    """A client of ``http://server/v1`` whose network is ``handler``."""
    return RemoteClient(
        ServerSpec("http://server/v1", **spec), transport=httpx.MockTransport(handler)
    )


def options(**call: Any) -> Any:
    """One call's options over default provider settings (``read_once`` a setting)."""
    read_once = call.pop("read_once", False)
    return call_options(ProviderSettings(read_once=read_once, max_new_tokens=9), None, call)


def whole(text: str, metadata: dict[str, Any] = METADATA) -> dict[str, Any]:
    """A chat.completion as the server answers it."""
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return {"object": "chat.completion", "choices": [choice], "quickllama": metadata}


def event_stream(*events: Any) -> bytes:
    """Server-sent events: each JSON object as a ``data:`` event, then ``[DONE]``."""
    body = "".join(f"data: {json.dumps(event)}\n\n" for event in events)
    return (body + "data: [DONE]\n\n").encode()


def chunk(content: str | None = None, *, last: bool = False) -> dict[str, Any]:
    """A chat.completion.chunk; ``last``: the one with finish_reason and the metadata."""
    delta = {} if content is None else {"content": content}
    event: dict[str, Any] = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    if last:
        event["choices"][0]["finish_reason"] = "stop"
        event["quickllama"] = METADATA
    return event


def test_sse_events_are_split_joined_and_end_at_done() -> None:
    lines = [
        ": a comment",
        "event: message",
        "data: one",
        "",
        "data: two",
        "data:three",
        "id: 7",
        "",
        "",
        "data: [DONE]",
        "",
        "data: after the end",
        "",
    ]
    assert list(sse_data(lines)) == ["one", "two\nthree"]
    assert list(sse_data(["data: last, without its blank line"])) == [
        "last, without its blank line"
    ]


def test_stats_cross_the_wire_unchanged() -> None:
    wire = json.loads(json.dumps(stats_dict(STATS)))
    assert stats_from_dict(wire) == STATS


def test_error_codes_name_the_same_errors() -> None:
    def body(code: str, message: str = "why and how to fix") -> dict[str, Any]:
        return {"error": {"message": message, "type": "x", "param": None, "code": code}}

    empty = error_from_body(body("EmptyInputError"), status=400)
    assert type(empty) is EmptyInputError and str(empty) == "why and how to fix"
    assert type(error_from_body(body("InvalidOptionError"), status=400)) is InvalidOptionError
    busy = error_from_body(body("rate_limit_exceeded"), status=429, retry_after=2.0)
    assert isinstance(busy, ServerBusyError) and busy.retry_after == 2.0 and busy.status == 429
    assert "max_retries" in str(busy)
    key = error_from_body(body("invalid_api_key"), status=401)
    assert isinstance(key, InvalidAPIKeyError) and "QUICKLLAMA_API_KEY" in str(key)
    late = error_from_body(body("timeout"))  # a stream's error event: no status
    assert isinstance(late, ServerUnavailableError) and late.status is None
    other = error_from_body(body("model_not_found"), status=404)
    assert type(other) is ServerError and other.code == "model_not_found"
    proxy = error_from_body("<html>Bad Gateway</html>", status=502)
    assert isinstance(proxy, ServerUnavailableError) and "Bad Gateway" in str(proxy)


def test_retry_after_reads_seconds_and_dates() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past


def test_the_body_carries_every_option_and_the_reply_becomes_an_answer() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url == "http://server/v1/chat/completions"
        assert request.headers["authorization"] == "Bearer sekrit"
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=whole("an answer"))

    remote = client(handler, api_key="sekrit")
    call = options(temperature=0.5, stop=["\n"], mode="qllm", question="why?")
    request = remote.chat("served", [("system", "doc"), ("user", "hi")], call)
    answer = request.run()
    body = seen[0]
    assert body["messages"] == [
        {"role": "system", "content": "doc"},
        {"role": "user", "content": "hi"},
    ]
    assert body["model"] == "served" and body["stream"] is False
    assert body["max_tokens"] == 9 and body["temperature"] == 0.5 and body["stop"] == ["\n"]
    assert body["mode"] == "qllm" and body["question"] == "why?" and body["max_sources"] == 3
    assert "document" not in body and "read_once" not in body
    assert answer.text == "an answer" and answer.finish_reason == "eos" and answer.stats == STATS
    assert request.metadata(answer) == METADATA  # passed through unchanged
    assert request.cache_read_tokens(answer) == 300
    assert request.model_name == "served"


def test_a_stream_gives_deltas_then_the_answer() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        events = event_stream(chunk(""), chunk("Hel"), chunk("lo"), chunk(last=True))
        return httpx.Response(200, content=events)

    request = client(handler).completion(None, "a prompt", options())
    with request.start() as stream:
        assert list(stream) == ["Hel", "lo"]
        assert stream.collect().text == "Hello"
    assert stream.result is not None and stream.result.stats == STATS
    assert request.metadata(stream.result)["split_route"] == "explicit"


def test_an_error_event_mid_stream_raises_the_named_error() -> None:
    failure = {"error": {"message": "boom", "type": "x", "param": None, "code": "QLLMError"}}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=event_stream(chunk("a"), failure))

    stream = client(handler).chat(None, [("user", "q")], options()).start()
    assert next(stream) == "a"
    with pytest.raises(Exception, match="boom") as raised:
        next(stream)
    assert type(raised.value).__name__ == "QLLMError"


def test_a_stream_without_the_metadata_says_what_is_wrong() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=event_stream(chunk("a")))

    with pytest.raises(ServerError, match="quickllama serve"):
        client(handler).chat(None, [("user", "q")], options()).start().collect()


class _Body(httpx.SyncByteStream):
    """A response body that records whether it was closed (the connection let go)."""

    def __init__(self) -> None:
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield event_stream(chunk("a"), chunk("b"), chunk(last=True))

    def close(self) -> None:
        self.closed = True


def test_closing_a_stream_closes_the_connection_even_before_the_first_delta() -> None:
    bodies: list[_Body] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(_Body())
        return httpx.Response(200, stream=bodies[-1])

    remote = client(handler)
    remote.chat(None, [("user", "q")], options()).start().close()
    with remote.chat(None, [("user", "q")], options()).start() as stream:
        assert next(stream) == "a"
    assert [body.closed for body in bodies] == [True, True]


def test_busy_and_unavailable_replies_are_retried_after_retry_after() -> None:
    replies = [
        httpx.Response(429, headers={"Retry-After": "0"}, json={"error": {"code": "x"}}),
        httpx.Response(503, json={"error": {"code": "service_unavailable", "message": "m"}}),
        httpx.Response(200, json=whole("at last")),
    ]
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return replies[len(calls) - 1]

    # the 503 has no Retry-After: the backoff of a second try is 1 s
    answer = client(handler, max_retries=2).chat(None, [("user", "q")], options()).run()
    assert answer.text == "at last" and len(calls) == 3


def test_retries_end_with_the_named_error() -> None:
    calls: list[httpx.Request] = []

    def busy(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        error = {"code": "rate_limit_exceeded", "message": "queue full"}
        return httpx.Response(429, headers={"Retry-After": "0.01"}, json={"error": error})

    with pytest.raises(ServerBusyError, match="queue full") as raised:
        client(busy, max_retries=1).chat(None, [("user", "q")], options()).run()
    assert raised.value.retry_after == 0.01 and len(calls) == 2


def test_other_errors_are_not_retried() -> None:
    calls: list[httpx.Request] = []

    def refused(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        error = {"code": "EmptyInputError", "message": "the question is empty"}
        return httpx.Response(400, json={"error": error})

    with pytest.raises(EmptyInputError, match="the question is empty"):
        client(refused, max_retries=3).chat(None, [("user", "q")], options()).run()
    assert len(calls) == 1


def test_network_errors_are_retried_then_raise_unavailable() -> None:
    calls: list[httpx.Request] = []

    def down(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    remote = client(down, max_retries=1)
    with pytest.raises(ServerUnavailableError, match="cannot reach .*http://server/v1") as raised:
        remote.chat(None, [("user", "q")], options()).run()
    assert raised.value.status is None and isinstance(raised.value.__cause__, httpx.ConnectError)
    assert len(calls) == 2

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(ServerUnavailableError, match="sent nothing for 3.0 s.*timeout="):
        client(slow, timeout=3.0, max_retries=0).chat(None, [("user", "q")], options()).run()


class _DocumentServer:
    """Plays ``/v1/documents`` and answers by document id; can forget its documents."""

    def __init__(self) -> None:
        self.posted: list[dict[str, Any]] = []
        self.asked: list[dict[str, Any]] = []
        self.known: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if request.url.path == "/v1/documents":
            self.posted.append(body)
            document_id = f"doc-{len(self.posted)}"
            self.known.add(document_id)
            return httpx.Response(200, json={"id": document_id, "object": "document"})
        self.asked.append(body)
        if body["document_id"] not in self.known:
            error = {"code": "document_not_found", "message": "no such document"}
            return httpx.Response(404, json={"error": error})
        return httpx.Response(200, json=whole("from memory"))


def test_read_once_posts_a_known_document_once_and_asks_by_its_id() -> None:
    server = _DocumentServer()
    remote = client(server)
    split = PromptSplit(document="the document", question="what?", route="explicit")
    call = options(read_once=True, mode="qllm", question="what?", document="the document")
    for _ in range(2):
        assert remote.document_question(None, split, call).run().text == "from memory"
    assert server.posted == [{"text": "the document", "mode": "qllm"}]
    first, second = server.asked
    assert first["document_id"] == second["document_id"] == "doc-1"
    assert first["messages"] == [{"role": "user", "content": "what?"}]
    for name in ("mode", "document", "question", "read_once"):
        assert name not in first  # the document's, posted with it
    other_mode = replace(call, engine_options={**call.engine_options, "mode": "infllm"})
    remote.document_question(None, split, other_mode).run()
    assert len(server.posted) == 2  # another mode is another read

    server.known.clear()  # the server forgot (restarted without its memory directory)
    assert remote.document_question(None, split, call).run().text == "from memory"
    assert len(server.posted) == 3 and server.asked[-1]["document_id"] == "doc-3"


def test_read_once_without_a_known_document_lets_the_server_route() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, json=whole("ok"))

    client(handler).chat(None, [("user", "q")], options(read_once=True)).run()
    assert seen[0]["read_once"] is True and "document_id" not in seen[0]


def test_async_requests_use_the_async_client() -> None:
    server = _DocumentServer()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/documents" or "document_id" in json.loads(request.content):
            return server(request)
        return httpx.Response(200, content=event_stream(chunk("x"), chunk("y"), chunk(last=True)))

    remote = client(handler)
    split = PromptSplit(document="d", question="q", route="explicit")
    call = options(read_once=True, question="q", document="d")

    async def run() -> tuple[Any, list[Any]]:
        answer = await remote.document_question(None, split, call).arun()
        events = [e async for e in remote.chat(None, [("user", "q")], options()).aevents()]
        return answer, events

    answer, events = asyncio.run(run())
    assert answer.text == "from memory" and len(server.posted) == 1
    assert events[:2] == ["x", "y"] and events[2].text == "xy" and events[2].stats == STATS


def test_token_counts_and_the_input_limit_are_asked_of_the_server() -> None:
    seen: list[tuple[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, json.loads(request.content or b"null")))
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m", "max_model_len": 4096}]})
        return httpx.Response(200, json={"tokens": [5, 6, 7], "count": 3})

    remote = client(handler)
    assert remote.tokenize("some text") == [5, 6, 7]
    assert remote.tokenize_chat([("user", "hi")]) == [5, 6, 7]
    assert remote.max_input_tokens() == remote.max_input_tokens() == 4096  # asked once
    assert seen == [
        ("/v1/tokenize", {"prompt": "some text"}),
        ("/v1/tokenize", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/models", None),
    ]
    old = client(lambda request: httpx.Response(200, json={"data": [{"id": "m"}]}))
    with pytest.raises(ServerError, match="max_model_len"):
        old.max_input_tokens()


def test_remote_settings_keep_the_key_secret_and_refuse_local_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUICKLLAMA_API_KEY", "from-env")
    url = "http://127.0.0.1:9/v1"  # nothing listens: construction must not ask the server
    chat = ChatQLLM(base_url=url, timeout=5, max_retries=1)
    llm = QLLM(base_url=url)
    assert chat.api_key is not None and chat.api_key.get_secret_value() == "from-env"
    for shown in (repr(chat), str(chat._identifying_params), repr(llm), llm.to_json()):
        assert "from-env" not in shown
    assert chat.profile is not None and "max_input_tokens" not in chat.profile
    assert chat._identifying_params["base_url"] == url
    spec = chat.remote().spec  # type: ignore[union-attr]
    assert (spec.api_key, spec.timeout, spec.max_retries) == ("from-env", 5, 1)
    with pytest.raises(ConfigError, match="base_url"):
        chat.get_engine()  # no model is loaded here
    with pytest.raises(InvalidOptionError, match="device cannot be given with base_url"):
        ChatQLLM(base_url=url, device="cpu")
    with pytest.warns(UserWarning, match="ignores timeout"):
        ChatQLLM(timeout=5)  # a local engine
