"""The providers' client of a quickllama server: the one implementation of the wire format.

A provider given ``base_url`` loads no model: :func:`qllm_integrations.routing.provider_request`
builds a :class:`RemoteRequest` here instead of a local
:class:`~qllm_integrations.request.Request`, with the same surface (``start``, ``run``,
``arun``, ``aevents``, ``metadata``, ``cache_read_tokens``). The wire format is
docs/SERVER.md's: OpenAI's chat and completion objects, quickllama's own fields at the top
level of the body, and the provider metadata in the reply's ``quickllama`` field, which is
passed through unchanged, so evidence, usage and memory reuse read as they do locally.

- **Errors.** An error reply whose ``code`` names a :mod:`qllm_core.errors` class raises that
  class, so a provider raises the same named error whichever side runs the engine. A full
  queue (429) raises :class:`ServerBusyError`; a server that cannot be reached, does not
  answer in ``timeout`` seconds, is loading or draining raises :class:`ServerUnavailableError`;
  a wrong API key :class:`InvalidAPIKeyError`; anything else :class:`ServerError`.
- **Retries.** Only a 429, a 502/503 or a network error is retried (``max_retries`` times),
  after the reply's ``Retry-After`` or a backoff; never once an answer has started.
- **Read once.** A document known on this side (``document=``) is posted to
  ``/v1/documents`` once per client (the id is kept per document hash and mode), and each
  question names its ``document_id``; a document the server must find in the messages is
  sent with ``read_once: true``.

Clients are shared process-wide by :class:`ServerSpec` (one connection pool, one document
cache per server and key), as engines are (:mod:`qllm_integrations.engines`). An async call
opens its own ``httpx.AsyncClient``: a pool is bound to the event loop that opened it.

This module imports ``httpx``, but neither LangChain nor LlamaIndex nor torch.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import httpx

from qllm_core import errors
from qllm_core.errors import QLLMError
from qllm_core.progress import ProgressListener
from qllm_core.results import Answer, AnswerStream
from qllm_integrations.request import stats_from_dict

if TYPE_CHECKING:
    from qllm_integrations.settings import CallOptions
    from qllm_integrations.split import PromptSplit

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 600.0
"""Seconds a request may wait for the server's next bytes when ``timeout`` is ``None``
(reading a long document on a CPU takes minutes before the first token)."""
DEFAULT_MAX_RETRIES: Final = 2
"""Retries of a refused or failed request when ``max_retries`` is ``None`` (OpenAI's)."""
MAX_RETRY_WAIT: Final = 60.0
"""Longest wait between two tries, whatever ``Retry-After`` asks."""
RETRIED_STATUSES: Final = (429, 502, 503)
"""Replies worth another try: a full queue, a proxy without a server, loading or draining."""
DONE: Final = "[DONE]"
_DOCUMENT_FIELDS: Final = ("mode", "document", "question", "read_once")
"""Fields a question by ``document_id`` leaves out: the document and its read are posted."""
"""The data of the event that ends a stream."""


class ServerError(QLLMError):
    """An error reply of a quickllama server that names no :mod:`qllm_core.errors` class.

    ``status`` is the HTTP status (``None``: no reply at all), ``code`` and ``param`` the
    error body's (docs/SERVER.md's table of errors).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


class ServerBusyError(ServerError):
    """The server's queue is full (429): try again after :attr:`retry_after` seconds.

    Raised once ``max_retries`` tries were refused; raise ``max_retries``, or run more
    replicas (``quickllama serve --replicas``) or a longer ``--max-queue``.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerUnavailableError(ServerError, ConnectionError):
    """No answer: the server cannot be reached, timed out, or is loading or draining."""


class InvalidAPIKeyError(ServerError, PermissionError):
    """The server wants another API key (401)."""


_NAMED: Final[dict[str, type[QLLMError]]] = {
    name: value
    for name, value in vars(errors).items()
    if isinstance(value, type) and issubclass(value, QLLMError)
}
"""The classes an error ``code`` may name: raised again on this side."""
_BY_CODE: Final[dict[str, type[ServerError]]] = {
    "rate_limit_exceeded": ServerBusyError,
    "service_unavailable": ServerUnavailableError,
    "timeout": ServerUnavailableError,
    "invalid_api_key": InvalidAPIKeyError,
}
_BY_STATUS: Final[dict[int, type[ServerError]]] = {
    401: InvalidAPIKeyError,
    429: ServerBusyError,
    502: ServerUnavailableError,
    503: ServerUnavailableError,
    504: ServerUnavailableError,
}
_HINTS: Final[dict[type[ServerError], str]] = {
    InvalidAPIKeyError: "pass the server's key as api_key= or in QUICKLLAMA_API_KEY",
    ServerBusyError: "raise max_retries, or serve more replicas or a longer --max-queue",
}


def error_from_body(
    body: Any, *, status: int | None = None, retry_after: float | None = None
) -> QLLMError:
    """The exception for an error reply (``{"error": {...}}``) or a stream's error event.

    A ``code`` naming a :mod:`qllm_core.errors` class gives that class (with the server's
    message); otherwise the code, then the status, chooses among this module's errors.
    """
    error = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        error = {"message": f"HTTP {status}: {str(body)[:300]}"}
    message = str(error.get("message") or f"HTTP {status}")
    code = error.get("code")
    named = _NAMED.get(code) if isinstance(code, str) else None
    if named is not None:
        return named(message)
    kind = _BY_CODE.get(str(code)) or _BY_STATUS.get(status or 0, ServerError)
    if kind in _HINTS:
        message = f"{message} ({_HINTS[kind]})"
    details: dict[str, Any] = {"status": status, "code": code, "param": error.get("param")}
    if kind is ServerBusyError:
        return ServerBusyError(message, retry_after=retry_after, **details)
    return kind(message, **details)


def error_from_response(response: httpx.Response) -> QLLMError:
    """The exception for an HTTP error reply (its body read already)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    return error_from_body(body, status=response.status_code, retry_after=retry_after)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds from now: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The data of each server-sent event in ``lines``, up to the ``[DONE]`` event.

    Lines without their line break, as ``httpx.Response.iter_lines`` gives them. An event
    ends at a blank line; its ``data:`` lines are joined by newlines; comments (``:...``)
    and other fields (``event:``, ``id:``, ``retry:``) are skipped.
    """
    decoder = _SSEDecoder()
    for line in lines:
        data = decoder.feed(line)
        if data == DONE:
            return
        if data is not None:
            yield data
    data = decoder.feed("")  # a last event without its blank line
    if data is not None and data != DONE:
        yield data


async def asse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """:func:`sse_data` of an async line iterator."""
    decoder = _SSEDecoder()
    async for line in lines:
        data = decoder.feed(line)
        if data == DONE:
            return
        if data is not None:
            yield data
    data = decoder.feed("")
    if data is not None and data != DONE:
        yield data


class _SSEDecoder:
    """Collects the ``data:`` lines of one server-sent event at a time."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        """Take one line; the event's data when ``line`` ends an event, else ``None``."""
        if not line:
            data, self._data = self._data, []
            return "\n".join(data) if data else None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None


@dataclass(frozen=True)
class ServerSpec:
    """Where a server is and how to talk to it: the key of the client registry."""

    base_url: str
    """``http://host:port/v1`` (a URL without a path gets ``/v1``)."""
    api_key: str | None = field(default=None, repr=False)
    timeout: float | None = None
    """Seconds to wait for the server's next bytes; ``None``: :data:`DEFAULT_TIMEOUT`."""
    max_retries: int | None = None
    """Retries of a 429, 502, 503 or network error; ``None``: :data:`DEFAULT_MAX_RETRIES`."""

    def root(self) -> str:
        """The base URL without a trailing slash, ``/v1`` added when it has no path."""
        url = httpx.URL(self.base_url.rstrip("/"))
        return str(url.copy_with(path="/v1")) if url.path in ("", "/") else str(url)


_clients: dict[ServerSpec, RemoteClient] = {}
_clients_lock = threading.Lock()


def client_for(spec: ServerSpec) -> RemoteClient:
    """The shared client of ``spec`` (made on first use)."""
    with _clients_lock:
        client = _clients.get(spec)
        if client is None:
            client = _clients[spec] = RemoteClient(spec)
        return client


class RemoteClient:
    """HTTP to one quickllama server: requests with retries, errors named, documents kept.

    Thread-safe: the providers call it from worker threads.
    """

    def __init__(self, spec: ServerSpec, *, transport: httpx.MockTransport | None = None) -> None:
        """A client of the server ``spec`` names.

        ``transport``: an httpx transport in place of the network, for both the sync and
        the async client (tests play the server with one).
        """
        self.spec = spec
        self.base_url = spec.root()
        self.max_retries = DEFAULT_MAX_RETRIES if spec.max_retries is None else spec.max_retries
        seconds = DEFAULT_TIMEOUT if spec.timeout is None else spec.timeout
        self._options: dict[str, Any] = {
            "base_url": self.base_url,
            "headers": {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {},
            "timeout": httpx.Timeout(seconds, connect=min(seconds, 10.0)),
            "transport": transport,
        }
        self._http = httpx.Client(**self._options)
        self._lock = threading.Lock()
        self._documents: dict[tuple[str, str | None], str] = {}
        self._max_input_tokens: int | None = None

    def async_http(self) -> httpx.AsyncClient:
        """A new async client with this client's URL, key and timeout (close it after use)."""
        return httpx.AsyncClient(**self._options)

    # -- requests the providers make ------------------------------------------------------

    def chat(
        self, model: str | None, turns: Sequence[tuple[str, str]], options: CallOptions
    ) -> RemoteRequest:
        """A chat completion of ``turns`` (``(role, text)``), routed by the server."""
        messages = [{"role": role, "content": text} for role, text in turns]
        return self._request(model, "/chat/completions", {"messages": messages}, options)

    def completion(self, model: str | None, prompt: str, options: CallOptions) -> RemoteRequest:
        """A completion of ``prompt``, routed by the server (``question``/``document`` too)."""
        return self._request(model, "/completions", {"prompt": prompt}, options)

    def document_question(
        self, model: str | None, split: PromptSplit, options: CallOptions
    ) -> RemoteRequest:
        """``split.question`` answered from the memory of ``split.document`` (read once).

        The document is posted to ``/v1/documents`` when the request starts, unless this
        client posted it before (same text and mode); the question names its id.
        """
        fields = wire_options(options)
        for name in _DOCUMENT_FIELDS:  # the mode is the document's, given when it is posted
            fields.pop(name, None)
        fields["messages"] = [{"role": "user", "content": split.question}]
        document = (split.document, options.engine_options.get("mode"))
        return RemoteRequest(self, "/chat/completions", fields, model, document)

    def _request(
        self, model: str | None, path: str, body: dict[str, Any], options: CallOptions
    ) -> RemoteRequest:
        return RemoteRequest(self, path, {**body, **wire_options(options)}, model)

    # -- documents ---------------------------------------------------

    def document_id(self, text: str, mode: str | None, *, stale: str | None = None) -> str:
        """The id of ``text`` (read in ``mode``) on the server, posted on first use.

        ``stale``: an id the server no longer knows (forgotten, or another server's): it
        is dropped and the document posted again.
        """
        key = self._document_key(text, mode, stale)
        known = self._documents.get(key)
        if known is not None:
            return known
        record = self.send("POST", "/documents", {"text": text, "mode": mode}).json()
        return self._keep_document(key, record)

    async def adocument_id(
        self, http: httpx.AsyncClient, text: str, mode: str | None, *, stale: str | None = None
    ) -> str:
        """:meth:`document_id` over an async client."""
        key = self._document_key(text, mode, stale)
        known = self._documents.get(key)
        if known is not None:
            return known
        response = await self.asend(http, "POST", "/documents", {"text": text, "mode": mode})
        return self._keep_document(key, response.json())

    def _document_key(
        self, text: str, mode: str | None, stale: str | None
    ) -> tuple[str, str | None]:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        key = (digest, mode)
        with self._lock:
            if stale is not None and self._documents.get(key) == stale:
                del self._documents[key]
        return key

    def _keep_document(self, key: tuple[str, str | None], record: Mapping[str, Any]) -> str:
        document_id = str(record["id"])
        logger.debug("document %s: %s (%s tokens)", key[0][:12], document_id, record.get("tokens"))
        with self._lock:
            self._documents[key] = document_id
        return document_id

    # -- what needs the engine's tokenizer or config -------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` as the engine reads caller text (``POST /v1/tokenize``)."""
        return self._tokens({"prompt": text})

    def tokenize_chat(self, turns: Sequence[tuple[str, str]]) -> list[int]:
        """Token ids of ``turns`` in the model's chat template (the ``direct`` route's)."""
        return self._tokens({"messages": [{"role": r, "content": t} for r, t in turns]})

    def max_input_tokens(self) -> int:
        """The engine's prompt limit: ``max_model_len`` of ``GET /v1/models`` (asked once)."""
        if self._max_input_tokens is None:
            models = self.send("GET", "/models").json().get("data") or [{}]
            limit = models[0].get("max_model_len")
            if not isinstance(limit, int):
                raise ServerError(
                    f"the server at {self.base_url} does not say its max_model_len "
                    "(GET /v1/models); upgrade it (quickllama serve)"
                )
            self._max_input_tokens = limit
        return self._max_input_tokens

    def _tokens(self, body: dict[str, Any]) -> list[int]:
        tokens = self.send("POST", "/tokenize", body).json().get("tokens")
        if not isinstance(tokens, list):
            raise ServerError(f"POST {self.base_url}/tokenize answered without 'tokens'")
        return [int(token) for token in tokens]

    # -- transport ------------------------------------------------------------------------

    def send(
        self, method: str, path: str, body: Any = None, *, stream: bool = False
    ) -> httpx.Response:
        """The server's successful reply, after retries (see the module's docstring).

        With ``stream`` the body is not read yet: close the response after use.

        Raises:
            QLLMError: the error the reply names (see :func:`error_from_body`).
        """
        request = self._http.build_request(method, path, json=body)
        attempt = 0
        while True:
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as error:
                failure: QLLMError = self._unreachable(error)
            else:
                if response.is_success:
                    return response
                response.read()
                response.close()
                failure = error_from_response(response)
            delay = self._retry_delay(attempt, failure)
            if delay is None:
                raise failure
            time.sleep(delay)
            attempt += 1

    async def asend(
        self,
        http: httpx.AsyncClient,
        method: str,
        path: str,
        body: Any = None,
        *,
        stream: bool = False,
    ) -> httpx.Response:
        """:meth:`send` over an async client (from :meth:`async_http`)."""
        request = http.build_request(method, path, json=body)
        attempt = 0
        while True:
            try:
                response = await http.send(request, stream=stream)
            except httpx.TransportError as error:
                failure: QLLMError = self._unreachable(error)
            else:
                if response.is_success:
                    return response
                await response.aread()
                await response.aclose()
                failure = error_from_response(response)
            delay = self._retry_delay(attempt, failure)
            if delay is None:
                raise failure
            await asyncio.sleep(delay)
            attempt += 1

    def _unreachable(self, error: httpx.TransportError) -> ServerUnavailableError:
        if isinstance(error, httpx.TimeoutException):
            seconds = self._http.timeout.read
            message = (
                f"the quickllama server at {self.base_url} sent nothing for {seconds} s "
                f"({type(error).__name__}); raise timeout=, or check the server"
            )
        else:
            message = (
                f"cannot reach the quickllama server at {self.base_url} "
                f"({type(error).__name__}: {error}); start it (quickllama serve) or fix base_url"
            )
        failure = ServerUnavailableError(message)
        failure.__cause__ = error
        return failure

    def _retry_delay(self, attempt: int, failure: QLLMError) -> float | None:
        """Seconds to wait before the next try, or ``None`` when ``failure`` is final."""
        if attempt >= self.max_retries or not isinstance(failure, ServerError):
            return None
        if failure.status is not None and failure.status not in RETRIED_STATUSES:
            return None
        wait = getattr(failure, "retry_after", None)
        if wait is None:
            wait = 0.5 * 2**attempt
        logger.info("%s; try %d of %d in %.1f s", failure, attempt + 2, self.max_retries + 1, wait)
        return float(min(wait, MAX_RETRY_WAIT))


def wire_options(options: CallOptions) -> dict[str, Any]:
    """One call's options as body fields: OpenAI's names, then quickllama's (SERVER.md).

    Every option is sent, the settings' defaults included, so the server's own defaults
    never change an answer.
    """
    engine = dict(options.engine_options)
    body: dict[str, Any] = {"max_tokens": engine.pop("max_new_tokens"), **engine}
    body["max_sources"] = options.max_evidence
    if options.question is not None:
        body["question"] = options.question
    if options.document is not None:
        body["document"] = options.document
    if options.read_once:
        body["read_once"] = True
    return body


@dataclass
class RemoteRequest:
    """A request for a quickllama server: the providers' request surface over HTTP.

    Built by :class:`RemoteClient`; :meth:`start` and :meth:`run` send it (after posting
    its document, for a read-once question). :meth:`metadata` is the reply's
    ``quickllama`` field, unchanged.
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
        return self._answer(self._send(stream=False).json())

    async def arun(self, listener: ProgressListener | None = None) -> Answer:
        """:meth:`run` over an async client."""
        async with self.client.async_http() as http:
            response = await self._asend(http, stream=False)
            return self._answer(response.json())

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
                reply = _Reply(self)
                async for data in asse_data(response.aiter_lines()):
                    delta = reply.feed(data)
                    if delta:
                        yield delta
                yield reply.answer()
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
            document_id = self.client.document_id(*self.document, stale=stale)
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
            document_id = await self.client.adocument_id(http, *self.document, stale=stale)
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
        reply = _Reply(self)
        try:
            yield ""  # skipped by AnswerStream; see start()
            for data in sse_data(response.iter_lines()):
                delta = reply.feed(data)
                if delta:
                    yield delta
        finally:
            response.close()
        return reply.answer()

    def _answer(self, reply: Mapping[str, Any]) -> Answer:
        """The :class:`Answer` of a whole (not streamed) reply; keeps its metadata."""
        choice = _only_choice(reply)
        self.replied = _metadata(reply)
        return _answer(_choice_text(choice), self.replied)


class _Reply:
    """A streamed reply being read: its text so far and, at the end, its metadata."""

    def __init__(self, request: RemoteRequest) -> None:
        self._request = request
        self._pieces: list[str] = []

    def feed(self, data: str) -> str:
        """Take one event's data; the text delta it carries (may be empty).

        Raises:
            QLLMError: the event is an error (the named error, as for an error reply).
        """
        chunk = json.loads(data)
        if "error" in chunk:
            raise error_from_body(chunk)
        if "quickllama" in chunk:
            self._request.replied = _metadata(chunk)
        choices = chunk.get("choices") or []
        delta = _choice_text(choices[0]) if choices else ""
        self._pieces.append(delta)
        return delta

    def answer(self) -> Answer:
        """The answer, once the stream ended."""
        if not self._request.replied:
            raise ServerError(
                "the stream ended without the chunk that carries the finish reason and the "
                "'quickllama' metadata; is base_url a quickllama server (quickllama serve)?"
            )
        return _answer("".join(self._pieces), self._request.replied)


def _only_choice(reply: Mapping[str, Any]) -> Mapping[str, Any]:
    choices = reply.get("choices") or []
    if len(choices) != 1:
        raise ServerError(f"expected one choice in the reply, got {len(choices)}")
    return choices[0]  # type: ignore[no-any-return]


def _choice_text(choice: Mapping[str, Any]) -> str:
    """A choice's text: a completion's ``text``, a chat's ``message`` or ``delta`` content."""
    if "text" in choice:
        return str(choice["text"] or "")
    content = (choice.get("message") or choice.get("delta") or {}).get("content")
    return str(content or "")


def _metadata(reply: Mapping[str, Any]) -> dict[str, Any]:
    """The reply's ``quickllama`` field (refused when missing: not a quickllama server)."""
    metadata = reply.get("quickllama")
    if not isinstance(metadata, dict) or "qllm" not in metadata:
        raise ServerError(
            "the reply has no 'quickllama' metadata; is base_url a quickllama server "
            "(quickllama serve)?"
        )
    return metadata


def _answer(text: str, metadata: Mapping[str, Any]) -> Answer:
    """The :class:`Answer` the server's engine gave, rebuilt from its metadata."""
    return Answer(text, metadata["finish_reason"], stats_from_dict(metadata["qllm"]))
