"""Ray Serve scale-out: two CPU replicas of the server on a local Ray, the tiny model.

One local Ray (2 CPUs, no dashboard) and one deployment of two replicas serve the tests of
:class:`TestTwoReplicas`, which share a temporary memory directory. Which replica answered
is the ``x-quickllama-replica`` response header (``hostname:pid``). The last test runs the
command line's :func:`run_replicas` on the same Ray.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import ray
from fakes import tiny_model_dir
from ray import serve
from server_process import free_port

from qllm_core.errors import ConfigError
from qllm_integrations.remote.wire import DOCUMENT_HEADER
from qllm_integrations.serve.app import REPLICA_HEADER
from qllm_integrations.serve.ray import (
    APP_NAME,
    ROUTING_STATS_PERIOD_S,
    app,
    run_replicas,
    settings_from_args,
)
from qllm_integrations.serve.settings import ServeSettings

CLIENT_TIMEOUT = 90.0
"""No request here takes more than a few seconds: one that reaches this has hung."""
REPLACE_SECONDS = 180.0
"""Longest wait for Serve to replace a killed replica (a new process loads the model)."""


def document(topic: str) -> str:
    return (f"The {topic} log. The supply boat came on Tuesday with flour and lamp oil. ") * 10


@dataclass
class Cluster:
    settings: ServeSettings
    base_url: str
    memory_dir: Path
    client: openai.OpenAI
    model: str

    def ask(self, question: str, **extra: object) -> tuple[str, openai.types.chat.ChatCompletion]:
        """A chat completion; ``(replica that answered, completion)``."""
        headers = extra.pop("headers", None)
        raw = self.client.chat.completions.with_raw_response.create(
            model=self.model,
            messages=[{"role": "user", "content": question}],
            max_tokens=2,
            extra_body=extra or None,
            extra_headers=headers,  # type: ignore[arg-type]
        )
        return raw.headers[REPLICA_HEADER], raw.parse()

    def post(self, text: str) -> tuple[str, dict[str, object]]:
        """Post a document; ``(replica that read it, record)``."""
        reply = httpx.post(f"{self.base_url}/v1/documents", json={"text": text}, timeout=60)
        assert reply.status_code == 201, reply.text
        return reply.headers[REPLICA_HEADER], reply.json()


def replica_actors() -> dict[str, ray.actor.ActorHandle]:
    """The deployment's live replica actors by the name they answer with (``hostname:pid``)."""
    actors = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#"):
            try:
                actor = ray.get_actor(entry["name"], namespace=entry["namespace"])
                actors[ray.get(actor.__ray_call__.remote(_replica_name), timeout=10)] = actor
            except (ValueError, ray.exceptions.RayError):  # dead, or gone meanwhile
                continue
    return actors


def _replica_name(_: object) -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


# replicas cannot import this test module: they get _replica_name's code itself
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="class")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two replicas deployed as ``serve run qllm_integrations.serve.ray:app ...`` does."""
    memory_dir = tmp_path_factory.mktemp("shared-memories")
    flags = {"model": tiny_model_dir(), "memory_dir": str(memory_dir), "max_queue": "16"}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    client = None
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(app({**flags, "replicas": "2"}), name=APP_NAME, route_prefix="/")
        base_url = f"http://127.0.0.1:{port}"
        client = openai.OpenAI(
            base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=CLIENT_TIMEOUT
        )
        model = client.models.list().data[0].id
        settings = ServeSettings(model=flags["model"], memory_dir=str(memory_dir), max_queue=16)
        yield Cluster(settings, base_url, memory_dir, client, model)
    finally:
        if client is not None:
            client.close()
        serve.shutdown()
        ray.shutdown()


@pytest.mark.slow  # a Ray start and three engine loads: over a minute on 2 CPUs
class TestTwoReplicas:
    """One deployment of two replicas for all these tests (a class-scoped fixture)."""

    def test_requests_spread_over_both_replicas(self, cluster: Cluster) -> None:
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(cluster.ask, [f"Question {i}?" for i in range(12)]))
        assert all(reply.choices[0].message.content is not None for _, reply in replies)
        assert len({replica for replica, _ in replies}) == 2

    def test_document_read_by_one_replica_is_answered_by_the_other(self, cluster: Cluster) -> None:
        reader, record = cluster.post(document("lighthouse"))
        assert (cluster.memory_dir / str(record["id"]) / "memory").is_dir()
        answered_by = set()
        for _ in range(16):  # without the routing header: the less loaded of two at random
            replica, reply = cluster.ask("Who came on Tuesday?", document_id=record["id"])
            assert reply.usage.prompt_tokens_details.cached_tokens == record["tokens"]
            answered_by.add(replica)
            if replica != reader:
                break
        assert answered_by - {reader}, "no question reached the replica that did not read it"

    def test_questions_go_to_the_replica_holding_the_document(self, cluster: Cluster) -> None:
        holder, record = cluster.post(document("harbour"))
        time.sleep(3 * ROUTING_STATS_PERIOD_S)  # the replicas report what they hold
        headers = {DOCUMENT_HEADER: str(record["id"])}
        answered_by = [
            cluster.ask(f"Question {i}?", document_id=record["id"], headers=headers)[0]
            for i in range(6)
        ]
        assert answered_by == [holder] * 6

    def test_killed_replica_is_replaced_and_no_request_hangs(self, cluster: Cluster) -> None:
        before = replica_actors()
        assert len(before) == 2
        started: dict[int, str] = {}
        first_started = threading.Event()

        def stream(i: int) -> tuple[str, str]:
            """One long streamed answer: ``(replica or "", "done" | what went wrong)``."""
            body = {
                "model": cluster.model,
                "messages": [{"role": "user", "content": f"Tell a long story {i}."}],
                "max_tokens": 200,
                "min_new_tokens": 200,
                "stream": True,
            }
            url = f"{cluster.base_url}/v1/chat/completions"
            replica = ""
            try:
                with httpx.stream("POST", url, json=body, timeout=CLIENT_TIMEOUT) as reply:
                    replica = reply.headers.get(REPLICA_HEADER, "")
                    if replica:
                        started[i] = replica
                        first_started.set()
                    lines = list(reply.iter_lines())
                if reply.status_code != 200:
                    return replica, f"HTTP {reply.status_code}"
                return replica, "done" if lines[-2:] == ["data: [DONE]", ""] else "cut"
            except httpx.TimeoutException:
                return replica, "timeout"
            except httpx.HTTPError as error:
                return replica, type(error).__name__

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(stream, i) for i in range(6)]
            assert first_started.wait(CLIENT_TIMEOUT)
            victim = next(iter(started.values()))
            t0 = time.monotonic()
            ray.kill(before[victim], no_restart=True)
            outcomes = [future.result() for future in futures]
        assert time.monotonic() - t0 < CLIENT_TIMEOUT / 2, outcomes
        # every client heard how its request ended: the survivor's answers are whole; the
        # victim's were cut, or failed (500) before their first byte, or ended before the kill
        assert all(outcome != "timeout" for _, outcome in outcomes), outcomes
        survivor = set(before) - {victim}
        for replica, outcome in outcomes:
            if replica in survivor:
                assert outcome == "done", outcomes
            elif not replica:
                assert outcome.startswith("HTTP 5"), outcomes

        deadline = time.monotonic() + REPLACE_SECONDS
        while time.monotonic() < deadline and not (
            _running_replicas() == 2 and len(replica_actors().keys() - {victim}) == 2
        ):
            time.sleep(1)
        after = set(replica_actors())
        assert victim not in after and len(after) == 2, serve.status()
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(cluster.ask, [f"Again {i}?" for i in range(12)]))
        assert {replica for replica, _ in replies} == after

    def test_run_replicas_serves_until_sigterm(self, cluster: Cluster) -> None:
        """The command line's entry (last here: it replaces the deployment, then deletes it)."""
        stopped = threading.Event()

        def sigterm_once_deployed() -> None:
            deadline = time.monotonic() + REPLACE_SECONDS
            while time.monotonic() < deadline and not stopped.is_set():
                if _running_replicas() == 1:  # run_replicas' deployment (of 1) is up
                    health = httpx.get(f"{cluster.base_url}/health", timeout=CLIENT_TIMEOUT)
                    assert health.status_code == 200
                    break
                time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGTERM)

        handler = signal.getsignal(signal.SIGTERM)
        stopper = threading.Thread(target=sigterm_once_deployed)
        stopper.start()
        try:
            status = run_replicas(cluster.settings, 1)
        finally:
            stopped.set()
            stopper.join()
        assert status == 0
        assert signal.getsignal(signal.SIGTERM) is handler
        assert ray.is_initialized()  # not its Ray: left running
        assert APP_NAME not in serve.status().applications


def _running_replicas() -> int:
    """Replicas of the application now running (0 while it is not running)."""
    application = serve.status().applications.get(APP_NAME)
    if application is None or application.status != "RUNNING":
        return 0
    (deployment,) = application.deployments.values()
    return int(deployment.replica_states.get("RUNNING", 0))


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ({"modle": "x"}, "unknown argument 'modle'"),
        ({"max_queue": "many"}, "max_queue='many' is not of type int"),
        ({"max_queue": "0"}, "--max-queue must be"),
        ({"replicas": "two"}, "replicas='two'"),
        ({"replicas": "0"}, "--replicas must be"),
    ],
)
def test_serve_run_arguments_are_checked(args: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        app(args)


def test_serve_run_arguments_become_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUICKLLAMA_API_KEY", "from-env")
    args = {"model": "m", "max_document_tokens": "900", "request_timeout": "2.5", "replicas": "3"}
    expected = {"max_document_tokens": 900, "request_timeout": 2.5, "api_keys": ("from-env",)}
    assert settings_from_args(args) == ServeSettings(model="m", **expected)
    assert settings_from_args({"api_keys": "a, b"}).api_keys == ("a", "b")
