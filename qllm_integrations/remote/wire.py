"""The replies of a quickllama server, read: server-sent events, chunks, answers.

A streamed reply is ``data: {chunk}`` events up to ``data: [DONE]``; the chunk that carries
the ``finish_reason`` carries the provider metadata too (``quickllama``), from which the
engine's :class:`~qllm_core.results.Answer` is rebuilt, so a remote answer is the same
object as a local one (usage, evidence and source nodes come from it alike).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any, Final

from qllm_core.results import Answer
from qllm_integrations.remote.errors import ServerError, error_from_body
from qllm_integrations.request import stats_from_dict

DONE: Final = "[DONE]"
"""The data of the event that ends a stream."""

DOCUMENT_HEADER: Final = "serve_multiplexed_model_id"
"""Request header naming the ``document_id`` a request is about: Ray Serve's own routing
key, which its proxy hands to the request router before the body is read (SERVER.md)."""


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


class ReplyReader:
    """A streamed reply being read: its text deltas, then its answer and metadata."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self.metadata: dict[str, Any] = {}
        """The ``quickllama`` field, once its chunk came."""

    def feed(self, data: str) -> str:
        """Take one event's data; the text delta it carries (may be empty).

        Raises:
            QLLMError: the event is an error (the named error, as for an error reply).
        """
        chunk = json.loads(data)
        if "error" in chunk:
            raise error_from_body(chunk)
        if "quickllama" in chunk:
            self.metadata = _metadata(chunk)
        choices = chunk.get("choices") or []
        delta = _choice_text(choices[0]) if choices else ""
        self._pieces.append(delta)
        return delta

    def answer(self) -> Answer:
        """The answer, once the stream ended."""
        if not self.metadata:
            raise ServerError(
                "the stream ended without the chunk that carries the finish reason and the "
                "'quickllama' metadata; is base_url a quickllama server (quickllama serve)?"
            )
        return _answer("".join(self._pieces), self.metadata)


def read_whole(reply: Mapping[str, Any]) -> tuple[Answer, dict[str, Any]]:
    """A whole (not streamed) reply's answer and ``quickllama`` metadata."""
    choices = reply.get("choices") or []
    if len(choices) != 1:
        raise ServerError(f"expected one choice in the reply, got {len(choices)}")
    metadata = _metadata(reply)
    return _answer(_choice_text(choices[0]), metadata), metadata


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
