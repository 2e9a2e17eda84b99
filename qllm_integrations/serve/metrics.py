"""``GET /metrics``: what the server is doing, in Prometheus' text format.

Each app has its own :class:`~prometheus_client.CollectorRegistry` (no process-wide
state), so several apps in one process (tests, Ray Serve replicas) do not mix their
counts. Series (all prefixed ``quickllama_``):

- ``queue_depth``: requests accepted and not finished (``--max-queue`` bounds it);
- ``requests_total{endpoint, status}``: responses by route template and HTTP status;
- ``tokens_read_total``, ``tokens_generated_total``, ``cached_tokens_total``: prompt
  tokens read, tokens generated, and prompt tokens taken from a memory already there
  (answers stopped early included);
- ``requests_cancelled_total``: answers stopped early (client gone, deadline passed):
  each is counted once the engine's stream is closed, so the engine is free;
- ``prefill_tokens_per_second``, ``decode_tokens_per_second``: histograms, one sample per
  answer;
- ``memories``, ``memory_bytes``: document memories this process holds in RAM, and their
  bytes.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from qllm_core.results import Answer
from qllm_integrations.serve.limits import ASGIApp, Message, Receive, Scope, Send

RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
"""Tokens per second: from a large model on a CPU to a small one on a GPU."""
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerMetrics:
    """The series of one app; ``depth`` and ``held`` are read at each scrape."""

    def __init__(self, depth: Callable[[], float], held: Callable[[], tuple[int, int]]) -> None:
        """``depth``: requests in; ``held``: ``(memories, bytes)`` of the documents in RAM."""
        self.registry = CollectorRegistry()
        registry = self.registry
        Gauge(
            "quickllama_queue_depth", "Requests accepted and not finished", registry=registry
        ).set_function(depth)
        self.requests = Counter(
            "quickllama_requests",
            "Responses by endpoint and HTTP status",
            ["endpoint", "status"],
            registry=registry,
        )
        self.tokens_read = Counter(
            "quickllama_tokens_read", "Prompt tokens read", registry=registry
        )
        self.tokens_generated = Counter(
            "quickllama_tokens_generated", "Tokens generated", registry=registry
        )
        self.cancelled = Counter(
            "quickllama_requests_cancelled",
            "Answers stopped early: the client went away or the deadline passed",
            registry=registry,
        )
        self.cached_tokens = Counter(
            "quickllama_cached_tokens",
            "Prompt tokens taken from a document memory that was there already",
            registry=registry,
        )
        self.prefill_rate = Histogram(
            "quickllama_prefill_tokens_per_second",
            "Prompt tokens read per second of prefill, per answer",
            buckets=RATE_BUCKETS,
            registry=registry,
        )
        self.decode_rate = Histogram(
            "quickllama_decode_tokens_per_second",
            "Tokens generated per second of decoding, per answer",
            buckets=RATE_BUCKETS,
            registry=registry,
        )
        Gauge(
            "quickllama_memories", "Document memories held in RAM", registry=registry
        ).set_function(lambda: held()[0])
        Gauge(
            "quickllama_memory_bytes", "Bytes of the document memories held", registry=registry
        ).set_function(lambda: held()[1])

    def observe(self, answer: Answer, cached_tokens: int) -> None:
        """Count one answer's tokens and rates (a cancelled one's: what it read and made)."""
        stats = answer.stats
        if answer.finish_reason == "cancelled":
            self.cancelled.inc()
        self.tokens_read.inc(stats.tokens_read)
        self.tokens_generated.inc(stats.tokens_generated)
        self.cached_tokens.inc(cached_tokens)
        if stats.prefill_seconds > 0:
            self.prefill_rate.observe(stats.prefill_tokens_per_second)
        if stats.decode_seconds > 0 and stats.tokens_generated:
            self.decode_rate.observe(stats.tokens_generated / stats.decode_seconds)

    def render(self) -> bytes:
        """The text exposition of every series."""
        return generate_latest(self.registry)


class CountResponses:
    """ASGI middleware: counts each response in ``requests_total`` by route and status.

    The endpoint is the route's template (``/v1/documents/{document_id}``), so ids do not
    make new series; a path that matched no route counts as ``other``.
    """

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app, counting its response."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                endpoint = getattr(route, "path", None) or "other"
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting)
