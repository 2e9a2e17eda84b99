"""The errors of a quickllama server's replies, as named exceptions on the client's side.

An error reply (``{"error": {"message", "type", "param", "code"}}``, docs/SERVER.md) whose
``code`` names a :mod:`qllm_core.errors` class raises that class, so a provider raises the
same named error whichever side runs the engine. A full queue (429) raises
:class:`ServerBusyError`; a server that cannot be reached, does not answer in time, is
loading or draining raises :class:`ServerUnavailableError`; a wrong API key
:class:`InvalidAPIKeyError`; anything else :class:`ServerError`.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any, Final

import httpx

from qllm_core import errors
from qllm_core.errors import QLLMError


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
