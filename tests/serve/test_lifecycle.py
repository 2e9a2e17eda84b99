"""Deadlines, draining and shutdown: a request past --request-timeout, SIGTERM, load failure."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from fakes import tiny_engine
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from server_process import ServerProcess, chat_body, quickllama_command, start_server

from qllm_integrations.serve import ServeSettings, create_app

ENDLESS = 20_000


def events(lines: Iterator[str]) -> Iterator[dict | str]:
    for line in lines:
        if line.startswith("data: "):
            yield "[DONE]" if line == "data: [DONE]" else json.loads(line[6:])


REQUEST_TIMEOUT = 5
SHUTDOWN_TIMEOUT = 3


@pytest.fixture(scope="module")
def server() -> ServerProcess:
    timeouts = ("--request-timeout", str(REQUEST_TIMEOUT))
    with start_server(*timeouts, "--shutdown-timeout", str(SHUTDOWN_TIMEOUT)) as server:
        yield server


def stream_events(url: str, body: dict, received: list, started: threading.Barrier) -> None:
    """Append a stream's events to ``received``; meet ``started`` at the first one."""
    try:
        with httpx.stream("POST", url, json=body, timeout=60) as reply:
            for event in events(reply.iter_lines()):
                if not received:
                    started.wait(timeout=60)
                received.append(event)
    except httpx.TransportError as error:  # cut off: the test fails on it
        received.append(error)


def test_request_timeout(server: ServerProcess) -> None:
    url = f"{server.base_url}/v1/chat/completions"
    streamed: list = []
    started = threading.Barrier(1)
    thread = threading.Thread(
        target=stream_events, args=(url, chat_body(ENDLESS, True), streamed, started)
    )
    thread.start()
    start = time.monotonic()
    late = httpx.post(url, json=chat_body(ENDLESS, False), timeout=60)
    assert late.status_code == 504
    assert late.json()["error"]["code"] == "timeout"
    assert "--request-timeout" in late.json()["error"]["message"]
    assert time.monotonic() - start < REQUEST_TIMEOUT + 5
    thread.join(timeout=30)

    assert streamed[-1] == "[DONE]"
    assert streamed[-2]["error"]["code"] == "timeout"
    assert all("choices" in event for event in streamed[:-2])
    text = httpx.get(f"{server.base_url}/metrics").text
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples["quickllama_requests_cancelled_total"] == 2
    assert samples["quickllama_queue_depth"] == 0


def test_sigterm_drains_then_exits_0(server: ServerProcess) -> None:
    """Runs last in this module: it stops the server."""
    url = f"{server.base_url}/v1/chat/completions"
    short: list = []
    endless: list = []
    started = threading.Barrier(3)
    threads = [
        threading.Thread(target=stream_events, args=(url, chat_body(60, True), short, started)),
        threading.Thread(
            target=stream_events, args=(url, chat_body(ENDLESS, True), endless, started)
        ),
    ]
    for thread in threads:
        thread.start()
    started.wait(timeout=60)  # both requests are streaming
    sent = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    status = server.process.wait(timeout=30)
    took = time.monotonic() - sent
    for thread in threads:
        thread.join(timeout=10)

    assert status == 0, server.log()[-3000:]
    assert short[-1] == "[DONE]"  # finished within the grace period
    assert short[-2]["choices"][0]["finish_reason"] == "length"
    # stopped at the shutdown deadline, with an error event the client can act on
    assert endless[-1] == "[DONE]"
    assert endless[-2]["error"]["code"] == "service_unavailable"
    assert SHUTDOWN_TIMEOUT - 0.5 < took < SHUTDOWN_TIMEOUT + 10, took
    assert "Traceback" not in server.log()


def test_health_loading_failed_and_draining(tmp_path) -> None:
    settings = ServeSettings(memory_dir=str(tmp_path))
    with TestClient(create_app(settings, engine=tiny_engine())) as client:
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        client.app.state.server.drain()
        assert client.get("/health").json() == {"status": "draining"}
        refused = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "service_unavailable"

    missing = ServeSettings(model=str(tmp_path / "no-such-model"), memory_dir=str(tmp_path))
    with TestClient(create_app(missing)) as client:
        deadline = time.monotonic() + 30
        while client.get("/health").json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        failed = client.get("/health")
        assert failed.status_code == 503 and failed.json()["status"] == "failed"
        assert "no-such-model" in failed.json()["message"]


def test_a_model_that_cannot_load_exits_1(tmp_path) -> None:
    command = [*quickllama_command(), "serve", "--model", str(tmp_path / "missing"), "--port", "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "could not be loaded" in done.stderr and "missing" in done.stderr
