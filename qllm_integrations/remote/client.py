"""HTTP to one quickllama server: requests with retries, errors named, documents kept.

Only a 429, a 502/503 or a network error is retried (``max_retries`` times), after the
reply's ``Retry-After`` or a backoff; never once an answer has started. Clients are shared
process-wide by :class:`ServerSpec` (one connection pool, one document cache per server
and key), as engines are (:mod:`qllm_integrations.engines`). An async call opens its own
``httpx.AsyncClient``: a pool is bound to the event loop that opened it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import httpx

from qllm_core.errors import QLLMError
from qllm_integrations.remote.errors import (
    ServerError,
    ServerUnavailableError,
    error_from_response,
)
from qllm_integrations.remote.request import RemoteRequest
from qllm_integrations.remote.wire import DOCUMENT_HEADER

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
_DOCUMENT_FIELDS: Final = ("mode", "document", "question", "read_once")
"""Fields a question by ``document_id`` leaves out: the document and its read are posted."""


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

    # -- documents ------------------------------------------------------------------------

    def document_id(
        self, text: str, mode: str | None, *, stale: str | None = None
    ) -> tuple[str, bool | None]:
        """The id of ``text`` (read in ``mode``) on the server, posted on first use.

        Returns ``(id, reused)``: ``reused`` is the server's word when this call posted
        the document (``False``: it read it now; ``True``: it held it already), ``None``
        when the id was known here. ``stale``: an id the server no longer knows
        (forgotten, or another server's): it is dropped and the document posted again.
        """
        key = self._document_key(text, mode, stale)
        known = self._documents.get(key)
        if known is not None:
            return known, None
        record = self.send("POST", "/documents", {"text": text, "mode": mode}).json()
        return self._keep_document(key, record)

    async def adocument_id(
        self, http: httpx.AsyncClient, text: str, mode: str | None, *, stale: str | None = None
    ) -> tuple[str, bool | None]:
        """:meth:`document_id` over an async client."""
        key = self._document_key(text, mode, stale)
        known = self._documents.get(key)
        if known is not None:
            return known, None
        response = await self.asend(http, "POST", "/documents", {"text": text, "mode": mode})
        return self._keep_document(key, response.json())

    def _document_key(
        self, text: str, mode: str | None, stale: str | None
    ) -> tuple[str, str | None]:
        """The cache key of ``text`` read in ``mode``; a ``stale`` id under it is dropped."""
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        key = (digest, mode)
        with self._lock:
            if stale is not None and self._documents.get(key) == stale:
                del self._documents[key]
        return key

    def _keep_document(
        self, key: tuple[str, str | None], record: Mapping[str, Any]
    ) -> tuple[str, bool | None]:
        document_id = str(record["id"])
        logger.debug("document %s: %s (%s tokens)", key[0][:12], document_id, record.get("tokens"))
        with self._lock:
            self._documents[key] = document_id
        reused = record.get("reused")
        return document_id, None if reused is None else bool(reused)

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
        request = self._http.build_request(method, path, json=body, headers=_routing(body))
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
        request = http.build_request(method, path, json=body, headers=_routing(body))
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


def _routing(body: Any) -> dict[str, str]:
    """The routing header of a request about a posted document (none for others)."""
    if isinstance(body, dict) and body.get("document_id"):
        return {DOCUMENT_HEADER: str(body["document_id"])}
    return {}


def wire_options(options: CallOptions) -> dict[str, Any]:
    """One call's options as body fields: OpenAI's names, then quickllama's (SERVER.md).

    Every option the settings or the call give is sent; one left ``None`` is left out, so
    the server's engine's default applies, as a local engine's would.
    """
    engine = dict(options.engine_options)
    body: dict[str, Any] = {"max_tokens": engine.pop("max_new_tokens", None), **engine}
    body["max_sources"] = options.max_evidence
    if options.question is not None:
        body["question"] = options.question
    if options.document is not None:
        body["document"] = options.document
    if options.read_once:
        body["read_once"] = True
    return body
