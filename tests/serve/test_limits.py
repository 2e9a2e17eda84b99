"""API keys, the admission queue, and a client that goes away mid-stream.

One server with two API keys and ``--max-queue 1``: a request holding the only place
makes the next one a 429; when its client disconnects, the engine's stream is closed at
once (the metrics count it as cancelled, and nothing more is generated for it) and the
next request is admitted and streams at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_process import ServerProcess, chat_body, start_server

KEYS = ("key-one", "key-two")
ENDLESS = 20_000
"""Tokens asked of a request that should hold the engine until cancelled."""


@pytest.fixture(scope="module")
def server() -> ServerProcess:
    with start_server("--max-queue", "1", "--api-key", KEYS[0], "--api-key", KEYS[1]) as server:
        yield server


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def metric(server: ServerProcess, name: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise KeyError(name)


def first_delta(lines: Iterator[str]) -> str:
    """Read a chat stream's lines up to its first non-empty text delta.

    ``lines`` is the caller's ``response.iter_lines()``: letting go of that iterator
    closes the response (a client disconnect), so the caller keeps it while it should not.
    """
    for line in lines:
        if line.startswith("data: {"):
            choices = json.loads(line[6:])["choices"]
            if choices and choices[0]["delta"].get("content"):
                return choices[0]["delta"]["content"]
    raise AssertionError("the stream ended without text")


def test_api_keys(server: ServerProcess) -> None:
    url = f"{server.base_url}/v1/models"
    assert httpx.get(url).status_code == 401
    wrong = httpx.get(url, headers=auth("key-three"))
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(url, headers=auth(KEYS[1])).status_code == 200
    assert httpx.get(f"{server.base_url}/health").status_code == 200  # open to probes

    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.completions.create(model=server.model, prompt="Hi", max_tokens=1)
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEYS[0], max_retries=0)
    assert client.completions.create(model=server.model, prompt="Hi", max_tokens=1).choices


def test_documents_belong_to_their_keys(server: ServerProcess) -> None:
    documents = f"{server.base_url}/v1/documents"
    text = {"text": "The mill by the river grinds oats on Mondays. " * 8}
    record = httpx.post(documents, json=text, headers=auth(KEYS[0]), timeout=60).json()
    url = f"{documents}/{record['id']}"
    assert httpx.get(url, headers=auth(KEYS[0])).status_code == 200
    assert httpx.get(url, headers=auth(KEYS[1])).status_code == 404
    body = {"prompt": "When?", "document_id": record["id"], "max_tokens": 1}
    other = httpx.post(f"{server.base_url}/v1/completions", json=body, headers=auth(KEYS[1]))
    assert other.status_code == 404

    shared = httpx.post(documents, json=text, headers=auth(KEYS[1]), timeout=60)
    assert shared.json()["id"] == record["id"] and shared.json()["reused"]
    assert httpx.delete(url, headers=auth(KEYS[0])).status_code == 200
    assert httpx.get(url, headers=auth(KEYS[0])).status_code == 404
    assert httpx.get(url, headers=auth(KEYS[1])).status_code == 200  # still held by key two
    assert httpx.delete(url, headers=auth(KEYS[1])).status_code == 200
    assert httpx.get(url, headers=auth(KEYS[1])).status_code == 404


def test_full_queue_then_disconnect_frees_the_engine(server: ServerProcess) -> None:
    url = f"{server.base_url}/v1/chat/completions"
    headers = auth(KEYS[0])
    with httpx.Client(timeout=60) as holder:
        with holder.stream("POST", url, json=chat_body(ENDLESS, True), headers=headers) as held:
            assert held.status_code == 200
            lines = held.iter_lines()
            assert first_delta(lines)
            busy = httpx.post(url, json=chat_body(2, False), headers=headers, timeout=60)
            assert busy.status_code == 429
            assert busy.json()["error"]["code"] == "rate_limit_exceeded"
            assert int(busy.headers["retry-after"]) >= 1
            assert metric(server, "quickllama_requests_cancelled_total") == 0
        # the client is gone (its connection closed mid-stream)
    gone = time.monotonic()
    while metric(server, "quickllama_requests_cancelled_total") < 1:
        assert time.monotonic() - gone < 10, "the engine's stream was not closed"
        time.sleep(0.05)
    generated = metric(server, "quickllama_tokens_generated_total")
    assert generated < ENDLESS

    start = time.monotonic()
    with httpx.stream("POST", url, json=chat_body(3, True), headers=headers, timeout=60) as next_:
        assert next_.status_code == 200
        lines = next_.iter_lines()
        assert first_delta(lines)
        first_token = time.monotonic() - start
        assert [line for line in lines if line][-1] == "data: [DONE]"
    assert first_token < 5, f"the next request waited {first_token:.1f} s for its first token"
    # nothing more was generated for the cancelled request: only the next one's 3 tokens
    assert metric(server, "quickllama_tokens_generated_total") == generated + 3


def test_a_client_gone_before_a_whole_answer_frees_the_engine(server: ServerProcess) -> None:
    url = f"{server.base_url}/v1/chat/completions"
    cancelled = metric(server, "quickllama_requests_cancelled_total")
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
        httpx.post(url, json=chat_body(ENDLESS, False), headers=auth(KEYS[0]), timeout=2)
    gone = time.monotonic()
    while metric(server, "quickllama_requests_cancelled_total") < cancelled + 1:
        assert time.monotonic() - gone < 10, "the engine's stream was not closed"
        time.sleep(0.05)
    assert metric(server, "quickllama_queue_depth") == 0
