"""The server's load limits: how many requests it holds, how long each may take, how big.

- :class:`Admission`: at most ``--max-queue`` requests accepted at once (running, or waiting
  for the engine); one more is refused with 429 and a ``Retry-After`` header at once,
  rather than queued without bound.
- :func:`before_deadline`: a request's items (text deltas, the answer) until
  ``--request-timeout`` (past it, 504) or, once the server drains, its shutdown deadline
  (503); either way the engine's stream is closed.
- :class:`InFlight`: the answers whose engine stream is open, which shutdown waits for.
- :class:`BodyLimit`: request bodies over ``--max-body-bytes`` get 413 before they are read
  whole (``Content-Length``, or counted as they arrive).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any, TypeVar

from qllm_integrations.serve.openai_schema import APIError, too_large

T = TypeVar("T")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SMOOTHING = 0.2
"""Weight of the newest request in the running mean of request seconds."""
MAX_RETRY_AFTER = 60
"""Longest ``Retry-After`` suggested, in seconds."""


class Admission:
    """Counts the requests accepted and refuses those beyond ``max_queue``.

    Used from the event loop only (no lock): :meth:`admit` and :meth:`Ticket.release` run
    there.
    """

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.depth = 0
        """Requests accepted and not finished."""
        self.mean_seconds = 1.0
        """Running mean of how long a request holds its place (the ``Retry-After`` basis)."""

    def admit(self) -> Ticket:
        """A place for one request; release it when the request ends.

        Raises:
            APIError: 429, with ``Retry-After``, when ``max_queue`` requests are in.
        """
        if self.depth >= self.max_queue:
            wait = min(MAX_RETRY_AFTER, max(1, math.ceil(self.mean_seconds)))
            raise APIError(
                429,
                f"the server is busy: {self.depth} requests in (its --max-queue is "
                f"{self.max_queue}); retry in {wait} s",
                "rate_limit_exceeded",
                headers={"Retry-After": str(wait)},
            )
        self.depth += 1
        return Ticket(self)

    def _finished(self, seconds: float) -> None:
        self.depth -= 1
        self.mean_seconds += _SMOOTHING * (seconds - self.mean_seconds)


class Ticket:
    """One admitted request's place; :meth:`release` (idempotent) gives it back."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._start = time.monotonic()
        self._released = False

    def release(self) -> None:
        """Give the place back."""
        if not self._released:
            self._released = True
            self._admission._finished(time.monotonic() - self._start)


class InFlight:
    """Counts the answers whose engine stream is open, so shutdown can wait for them.

    A process must not exit while a worker thread is inside the model: each answer holds
    :meth:`hold` until its stream is closed, and shutdown waits in :meth:`wait_idle`.
    Thread-safe.
    """

    def __init__(self) -> None:
        self.count = 0
        self._idle = threading.Condition()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Count one answer while the block runs."""
        with self._idle:
            self.count += 1
        try:
            yield
        finally:
            with self._idle:
                self.count -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no answer is open (at most ``timeout`` seconds); whether none is."""
        with self._idle:
            return self._idle.wait_for(lambda: self.count == 0, timeout)


def timed_out(seconds: float) -> APIError:
    """The 504 of a request that ran past ``--request-timeout``."""
    return APIError(
        504,
        f"the request ran past this server's limit of {seconds:g} s (its --request-timeout "
        "flag) and was stopped; ask for fewer tokens or a shorter document",
        "timeout",
    )


def shut_down() -> APIError:
    """The 503 of a request still running when the server's shutdown deadline passed."""
    return APIError(
        503,
        "the server shut down before the answer was complete (its --shutdown-timeout "
        "passed); send the request again, to another server",
        "service_unavailable",
    )


async def before_deadline(
    items: AsyncGenerator[T, None],
    deadline: float,
    timeout: float,
    cutoff: Callable[[], float] = lambda: math.inf,
) -> AsyncGenerator[T, None]:
    """The items of ``items`` until ``deadline`` or ``cutoff()`` (``time.monotonic()``).

    Past ``deadline``: :func:`timed_out`; past ``cutoff()`` (the shutdown deadline once
    the server drains, read at each item): :func:`shut_down`. ``items`` is closed however
    this ends (its ``finally`` releases the engine).
    """
    try:
        while True:
            stop_at = min(deadline, cutoff())
            remaining = stop_at - time.monotonic()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                item = await asyncio.wait_for(items.__anext__(), remaining)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                raise (timed_out(timeout) if stop_at == deadline else shut_down()) from None
            yield item
    finally:
        await items.aclose()


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` is a 413 naming ``--max-body-bytes``.

    A declared ``Content-Length`` over the limit is refused before the app runs; a body
    sent without one is counted as it arrives, and the app's read of it raises the
    :class:`APIError` (answered by the app's handler).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app on a body within the limit."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            error = self._error(int(declared))
            await _send_json(send, error.status, error.body())
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._error(received)
            return message

        await self.app(scope, counted, send)

    def _error(self, size: int) -> APIError:
        return too_large(
            "the request body's size in bytes", size, self.max_bytes, "--max-body-bytes"
        )


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
