"""The request bodies the server accepts, and the error bodies it answers with.

OpenAI's fields that quickllama implements, plus its own (``document_id``, ``document``,
``question``, ...: see docs/SERVER.md), as pydantic models that forbid anything else.
Stock clients also send fields quickllama does not implement, with their neutral value
(``n: 1``, ``presence_penalty: 0``, ``null``): :func:`accepted_fields` lets those through
and refuses every other field, or a real value of one of them, with a 400 that names it
(:class:`APIError`, ``param``). Nothing a client sends is dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qllm_core.errors import InputTooLongError, InsufficientMemoryError, QLLMError
from qllm_core.options import unknown_option

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
    504: "server_error",
    507: "server_error",
}


class APIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body (also the payload of a stream's error event)."""
        kind = _ERROR_TYPES.get(self.status, "server_error" if self.status >= 500 else "")
        return {
            "error": {
                "message": self.message,
                "type": kind or "invalid_request_error",
                "param": self.param,
                "code": self.code,
            }
        }

    @classmethod
    def from_engine(cls, error: QLLMError) -> APIError:
        """An error quickllama raised on purpose: its class name is the ``code``.

        413 for an input over the engine's limit, 507 for one that would not fit in memory,
        400 for the rest; an option's error names it in ``param``.
        """
        status = 400
        if isinstance(error, InputTooLongError):
            status = 413
        elif isinstance(error, InsufficientMemoryError):
            status = 507
        param = getattr(error, "option", None)
        return cls(status, str(error), type(error).__name__, param=param)


def too_large(what: str, size: int, limit: int, flag: str) -> APIError:
    """The 413 for ``what`` of ``size`` over ``limit`` (set by the server's ``flag``)."""
    return APIError(
        413,
        f"{what} is {size:,}, over this server's limit of {limit:,} (its {flag} flag); "
        "send less, or ask the operator to raise the limit",
        "request_too_large",
    )


def service_unavailable(why: str) -> APIError:
    """The 503 while the model loads or the server drains."""
    return APIError(503, why, "service_unavailable")


_STRICT = ConfigDict(extra="forbid", strict=True)


class TextPart(BaseModel):
    """A ``{"type": "text", "text": ...}`` part of a message's content."""

    model_config = _STRICT
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; ``developer`` is read as ``system``."""

    model_config = _STRICT
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    """Accepted as OpenAI allows it; it does not change what the model reads."""
    tool_call_id: str | None = None
    """Accepted on ``tool`` messages (the result's text is what the model reads)."""

    def turn(self) -> tuple[str, str]:
        """``(role, text)`` as the providers' routing takes it (parts joined by newlines)."""
        role = "system" if self.role == "developer" else self.role
        if self.content is None:
            return role, ""
        if isinstance(self.content, str):
            return role, self.content
        return role, "\n".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    """``stream_options``: whether a last chunk carries the usage."""

    model_config = _STRICT
    include_usage: bool | None = None


class _Request(BaseModel):
    """Fields of both endpoints: OpenAI's, then quickllama's."""

    model_config = _STRICT
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None
    document_id: str | None = None
    """Answer from the memory of a document posted to ``/v1/documents``."""
    document: str | None = None
    question: str | None = None
    read_once: bool | None = None
    max_sources: int | None = Field(default=None, ge=0)
    """Most evidence passages returned (default 3)."""
    mode: str | None = None
    min_new_tokens: int | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    def stops(self) -> list[str] | None:
        """``stop`` as a list (``None``: not given)."""
        return [self.stop] if isinstance(self.stop, str) else self.stop

    def decoding(self) -> dict[str, Any]:
        """The options given, under the providers' call names (``max_tokens`` included)."""
        names = (
            *("temperature", "top_p", "seed", "mode", "min_new_tokens"),
            *("repetition_penalty", "no_repeat_ngram_size", "question", "document"),
        )
        given = {name: getattr(self, name) for name in names}
        given["max_tokens"] = self.max_tokens
        return {name: value for name, value in given.items() if value is not None}


class ChatCompletionRequest(_Request):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None

    def decoding(self) -> dict[str, Any]:
        """As for completions; ``max_completion_tokens`` is ``max_tokens``."""
        given = super().decoding()
        if self.max_completion_tokens is not None:
            if "max_tokens" in given:
                raise APIError(
                    400,
                    "give max_tokens or max_completion_tokens, not both (the same limit)",
                    "invalid_value",
                    param="max_completion_tokens",
                )
            given["max_tokens"] = self.max_completion_tokens
        return given


class CompletionRequest(_Request):
    """``POST /v1/completions``: ``prompt`` is one string."""

    prompt: str


class TokenizeRequest(BaseModel):
    """``POST /v1/tokenize``: a ``prompt`` or chat ``messages`` (one of them)."""

    model_config = _STRICT
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None

    def turns(self) -> list[tuple[str, str]] | None:
        """The messages as ``(role, text)`` turns; ``None`` for a prompt.

        Raises:
            APIError: 400 unless exactly one of ``prompt`` and ``messages`` is given.
        """
        if (self.prompt is None) == (self.messages is None):
            raise APIError(
                400, "give prompt or messages (one of them)", "invalid_value", param="prompt"
            )
        return None if self.messages is None else [m.turn() for m in self.messages]


class DocumentRequest(BaseModel):
    """``POST /v1/documents`` as JSON."""

    model_config = _STRICT
    text: str
    mode: str | None = None


_Neutral = Callable[[Any, Mapping[str, Any]], bool]

NEUTRAL: dict[str, _Neutral] = {
    "n": lambda value, _: value == 1,
    "presence_penalty": lambda value, _: value == 0,
    "frequency_penalty": lambda value, _: value == 0,
    "logprobs": lambda value, _: value is False or value == 0,
    "top_logprobs": lambda value, _: value == 0,
    "echo": lambda value, _: value is False,
    "best_of": lambda value, _: value == 1,
    "tools": lambda value, _: value == [],
    "functions": lambda value, _: value == [],
    "parallel_tool_calls": lambda _, body: not body.get("tools"),
    "store": lambda value, _: value is False,
}
"""Fields quickllama does not implement, and the values that ask for nothing of them."""

NOT_YET = ("n", "tools", "tool_choice", "response_format", "logit_bias", "logprobs")
"""Fields a later version may implement: their refusal says "not supported" (not unknown)."""


def accepted_fields(body: object, model: type[_Request]) -> dict[str, Any]:
    """``body`` without the fields that ask for nothing (``null``, or a :data:`NEUTRAL` value).

    Raises:
        APIError: 400 when the body is not a JSON object, or has a field ``model`` does not
            know with a real value (``param`` names it).
    """
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", "invalid_value")
    known = tuple(model.model_fields)
    kept: dict[str, Any] = {}
    for name, value in body.items():
        if name in known:
            kept[name] = value
        elif value is None or (name in NEUTRAL and NEUTRAL[name](value, body)):
            continue
        elif name in NOT_YET or name in NEUTRAL:
            raise APIError(
                400,
                f"{name}={value!r} is not supported by quickllama yet; leave it out "
                "(or send its neutral value)",
                "unsupported_parameter",
                param=name,
            )
        else:
            message = str(unknown_option(name, known, where="the request"))
            raise APIError(400, message, "unsupported_parameter", param=name)
    return kept


def parse_request(body: object, model: type[_Request]) -> Any:
    """``body`` validated as ``model`` (after :func:`accepted_fields`).

    Raises:
        APIError: 400 for a field :func:`accepted_fields` refuses.
        ValidationError: a bad value (the app answers it with :func:`invalid`).
    """
    return model.model_validate(accepted_fields(body, model))


def invalid(error: ValidationError) -> APIError:
    """Pydantic's first refusal as a 400 naming the field (``messages.0.content``)."""
    first = error.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    if first["type"] == "extra_forbidden":
        return APIError(400, f"unknown field {param!r}", "unsupported_parameter", param=param)
    message = f"{param}: {first['msg']}" if param else first["msg"]
    return APIError(400, message, "invalid_value", param=param)
