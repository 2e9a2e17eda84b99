"""A completion's answer on the wire: streamed as server-sent events, or sent whole.

The engine's stream runs in a worker thread (:func:`answer_items` under
:func:`~qllm_integrations._async.iterate_in_thread`); a consumer that stops (a client
gone, a deadline) cancels it, which stops a read between prefill chunks and a decoding
after its step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from qllm_core.errors import QLLMError
from qllm_core.results import Answer
from qllm_integrations.request import Request as ProviderRequest
from qllm_integrations.request import answer_events
from qllm_integrations.serve.completions import DONE, Reply, sse
from qllm_integrations.serve.limits import Receive, Scope, Send
from qllm_integrations.serve.openai_schema import APIError
from qllm_integrations.serve.state import ServerState

DISCONNECT_POLL = 0.5
"""Seconds between checks that a streaming client still waits for its first token."""
CLIENT_CLOSED = 499
"""Status logged for a request whose client went away before its answer (nginx's)."""


async def first_item(items: AsyncGenerator[str | Answer, None], client: Request) -> str | Answer:
    """The first item (the read comes before it); a client gone meanwhile stops the read.

    Raises:
        APIError: 499 when the client disconnected (checked every
            :data:`DISCONNECT_POLL` seconds): the request is cancelled, the engine freed.
    """
    first = asyncio.ensure_future(items.__anext__())
    try:
        while True:
            done, _ = await asyncio.wait({first}, timeout=DISCONNECT_POLL)
            if done:
                return first.result()
            if await client.is_disconnected():
                raise APIError(CLIENT_CLOSED, "the client went away during the read", "cancelled")
    finally:
        if not first.done():
            first.cancel()
            await items.aclose()


async def whole(
    reply: Reply, items: AsyncGenerator[str | Answer, None], client: Request
) -> Response:
    """The whole answer as JSON; a client gone before the end stops it (status 499)."""
    try:
        async for item in items:
            if isinstance(item, Answer):
                return JSONResponse(reply.whole(item))
            if await client.is_disconnected():
                break
    finally:
        await items.aclose()
    return Response(status_code=CLIENT_CLOSED)


async def events(
    reply: Reply,
    first: str | Answer,
    items: AsyncGenerator[str | Answer, None],
    include_usage: bool,
) -> AsyncGenerator[bytes, None]:
    """The server-sent events of a stream whose first item is ``first``."""
    yield reply.opening()
    try:
        item = first
        while not isinstance(item, Answer):
            yield reply.delta(item)
            item = await items.__anext__()
        yield reply.closing(item, include_usage)
    except StopAsyncIteration:
        pass
    except (APIError, QLLMError) as error:
        api_error = error if isinstance(error, APIError) else APIError.from_engine(error)
        yield sse(api_error.body())
    yield DONE


def answer_items(request: ProviderRequest, state: ServerState) -> Iterator[str | Answer]:
    """The request's text deltas, then its answer (in a worker thread); counted in metrics.

    Closing this closes the engine's stream; the partial answer that leaves is counted too
    (a cancelled request: the client went away or a deadline passed). The answer is held
    in ``state.in_flight`` until its stream is closed. A consumer that stops during the
    read stops the read (``answer_events`` registers the stream's ``cancel``).
    """
    with state.in_flight.hold():
        stream = request.start()
        counted = False
        try:
            for item in answer_events(stream):
                if isinstance(item, Answer):  # counted before the client can see the end
                    counted = True
                    state.metrics.observe(item, request.cache_read_tokens(item))
                yield item
        finally:
            if not counted and stream.result is not None:
                answer = stream.result
                state.metrics.observe(answer, request.cache_read_tokens(answer))


class ClosingStream(StreamingResponse):
    """A streaming response that runs ``on_close`` however it ends (client gone included)."""

    def __init__(
        self,
        content: AsyncGenerator[bytes, None],
        *,
        on_close: Callable[[], Awaitable[None]],
        **kwargs: Any,
    ) -> None:
        super().__init__(content, headers={"cache-control": "no-cache"}, **kwargs)
        self._content = content
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the stream; then close it and run ``on_close``."""
        try:
            await super().__call__(scope, receive, send)  # type: ignore[arg-type]
        finally:
            await self._content.aclose()
            await self._on_close()
