"""A request cut short during its read stops the read: the engine is not kept busy.

A document of some hundred thousand tokens takes the tiny model tens of seconds to read
here. A request past ``--request-timeout``, or whose client disconnects, during that read
must free the engine within a prefill chunk or two (``AnswerStream.cancel`` between
chunks), not at the end of the read: ``requests_cancelled_total`` counts it once the
engine's stream is closed.
"""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_process import ServerProcess, start_server

REQUEST_TIMEOUT = 12.0
DOCUMENT = " ".join(f"Sentence {i} is about topic {i % 7}." for i in range(40_000))
"""About 470K tokens: over a minute of reading for the tiny model on this CPU."""
FREED_WITHIN = 15.0
"""Seconds after the cut within which the engine must have stopped reading."""


@pytest.fixture(scope="module")
def server() -> ServerProcess:
    args = ("--request-timeout", str(REQUEST_TIMEOUT), "--max-body-bytes", str(10**8))
    with start_server(*args) as server:
        yield server


def cancelled(server: ServerProcess) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "quickllama_requests_cancelled_total"
    )


def wait_cancelled(server: ServerProcess, count: float) -> float:
    """Seconds until ``count`` requests are counted cancelled (inf past FREED_WITHIN)."""
    start = time.monotonic()
    while time.monotonic() - start < FREED_WITHIN:
        if cancelled(server) >= count:
            return time.monotonic() - start
        time.sleep(0.25)
    return float("inf")


def body(stream: bool) -> dict:
    return {
        "messages": [{"role": "user", "content": "Which topic is sentence 5 about?"}],
        "document": DOCUMENT,
        "max_tokens": 2,
        "stream": stream,
    }


def test_a_deadline_during_the_read_stops_the_read(server: ServerProcess) -> None:
    before = cancelled(server)
    url = f"{server.base_url}/v1/chat/completions"
    reply = httpx.post(url, json=body(False), timeout=REQUEST_TIMEOUT + 120)
    assert reply.status_code == 504, reply.text
    assert wait_cancelled(server, before + 1) < FREED_WITHIN


def test_a_client_gone_during_the_read_stops_the_read(server: ServerProcess) -> None:
    before = cancelled(server)
    url = f"{server.base_url}/v1/chat/completions"
    with pytest.raises(httpx.ReadTimeout):  # the client gives up while the server reads
        httpx.post(url, json=body(True), timeout=httpx.Timeout(60, read=REQUEST_TIMEOUT / 2))
    assert wait_cancelled(server, before + 1) < FREED_WITHIN
