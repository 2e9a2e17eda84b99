"""A request for a quickllama server, with the surface of a local provider request.

:class:`RemoteRequest` has what the providers use of
:class:`~qllm_integrations.request.Request` (``start``, ``run``, ``arun``, ``aevents``,
``metadata``, ``cache_read_tokens``, ``model_name``); its metadata is the reply's
``quickllama`` field, unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from qllm_core.progress import ProgressListener
from qllm_core.results import Answer, AnswerStream
from qllm_integrations.remote.errors import ServerError
from qllm_integrations.remote.wire import ReplyReader, asse_data, read_whole, sse_data

if TYPE_CHECKING:
    from qllm_integrations.remote.client import RemoteClient


@dataclass
class RemoteRequest:
    """A request for a quickllama server: the providers' request surface over HTTP.

    Built by :class:`RemoteClient`; :meth:`start` and :meth:`run` send it (after posting
    its document, for a read-once question). :meth:`metadata` is the reply's
    ``quickllama`` field, with ``memory_reused`` from the post when this request posted
    the document.
    """

    client: RemoteClient
    path: str
    """``/chat/completions`` or ``/completions``."""
    body: dict[str, Any]
    """The JSON body, less ``model``, ``stream`` and ``document_id``."""
    model: str | None
    """The served model's name, sent as ``model``; ``None``: whichever the server serves."""
    document: tuple[str, str | None] | None = None
    """``(text, mode)`` of the document to answer from by ``document_id``."""
    replied: dict[str, Any] = field(default_factory=dict)
    """The reply's ``quickllama`` metadata, once it came."""
    posted: bool | None = None
    """Whether the server held the document already when this request posted it (``None``:
    not posted by this request)."""

    @property
    def model_name(self) -> str:
        """The model named in the reply's metadata (before it: the one asked for, or the URL)."""
        return str(self.replied.get("model_name") or self.model or self.client.base_url)

    def start(self, listener: ProgressListener | None = None) -> AnswerStream:
        """Send the request for a streamed answer; close the stream to cancel it.

        The server reads the document: no progress reaches ``listener`` (kept for the
        providers' surface).
        """
        pieces = self._pieces(self._send(stream=True))
        next(pieces)  # into its try block: closing the stream now closes the connection too
        return AnswerStream(pieces)

    def run(self, listener: ProgressListener | None = None) -> Answer:
        """Send the request and wait for the whole answer (``listener``: see :meth:`start`)."""
        return self._keep(*read_whole(self._send(stream=False).json()))

    async def arun(self, listener: ProgressListener | None = None) -> Answer:
        """:meth:`run` over an async client."""
        async with self.client.async_http() as http:
            response = await self._asend(http, stream=False)
            return self._keep(*read_whole(response.json()))

    async def aevents(
        self, listener: ProgressListener | None = None
    ) -> AsyncGenerator[str | Answer, None]:
        """The streamed answer's text deltas, then its :class:`Answer`, over an async client.

        Stopping early (``break``, an exception) closes the connection, which cancels the
        answer on the server.
        """
        async with self.client.async_http() as http:
            response = await self._asend(http, stream=True)
            try:
                reader = ReplyReader()
                async for data in asse_data(response.aiter_lines()):
                    delta = reader.feed(data)
                    if delta:
                        yield delta
                yield self._keep(reader.answer(), reader.metadata)
            finally:
                await response.aclose()

    def metadata(self, answer: Answer) -> dict[str, Any]:
        """The reply's ``quickllama`` field: the provider metadata, as a local request's."""
        return self.replied

    def cache_read_tokens(self, answer: Answer) -> int:
        """Input tokens taken from a memory that was there already (0 when read now)."""
        return answer.stats.memory_tokens if self.replied.get("memory_reused") else 0

    def _send(self, *, stream: bool) -> httpx.Response:
        """Send the body (the document posted first, again if the server forgot it)."""
        if self.document is None:
            return self.client.send("POST", self.path, self._body(stream), stream=stream)
        stale = None
        while True:
            document_id, self.posted = self.client.document_id(*self.document, stale=stale)
            body = {**self._body(stream), "document_id": document_id}
            try:
                return self.client.send("POST", self.path, body, stream=stream)
            except ServerError as error:
                if error.code != "document_not_found" or stale is not None:
                    raise
                stale = document_id

    async def _asend(self, http: httpx.AsyncClient, *, stream: bool) -> httpx.Response:
        """:meth:`_send` over an async client."""
        if self.document is None:
            return await self.client.asend(
                http, "POST", self.path, self._body(stream), stream=stream
            )
        stale = None
        while True:
            document_id, self.posted = await self.client.adocument_id(
                http, *self.document, stale=stale
            )
            body = {**self._body(stream), "document_id": document_id}
            try:
                return await self.client.asend(http, "POST", self.path, body, stream=stream)
            except ServerError as error:
                if error.code != "document_not_found" or stale is not None:
                    raise
                stale = document_id

    def _body(self, stream: bool) -> dict[str, Any]:
        model = {} if self.model is None else {"model": self.model}
        return {**model, **self.body, "stream": stream}

    def _pieces(self, response: httpx.Response) -> Generator[str, None, Answer]:
        """The stream's text deltas; returns its :class:`Answer`. Closing it disconnects."""
        reader = ReplyReader()
        try:
            yield ""  # skipped by AnswerStream; see start()
            for data in sse_data(response.iter_lines()):
                delta = reader.feed(data)
                if delta:
                    yield delta
        finally:
            response.close()
        return self._keep(reader.answer(), reader.metadata)

    def _keep(self, answer: Answer, metadata: dict[str, Any]) -> Answer:
        """``answer``, its reply's metadata kept for :meth:`metadata`.

        The server answers every question by ``document_id`` from a memory; when this
        request posted the document, ``memory_reused`` says what that post found, as a
        local read-once request's first question does (``False``: read for it).
        """
        if self.posted is not None:
            metadata = {**metadata, "memory_reused": self.posted}
        self.replied = metadata
        return answer
