"""From an OpenAI request body to a provider request, and from its answer to OpenAI objects.

Routing is the providers' own: the body's options become the providers'
:class:`~qllm_integrations.settings.CallOptions` (same names, checks and messages), and
:func:`~qllm_integrations.routing.chat_request` / :func:`~qllm_integrations.routing.text_request`
decide how the prompt is read. A body naming a ``document_id`` is answered from that
document's memory instead (the question: ``question``, else the last user message or the
prompt). The answer comes back as ``chat.completion`` / ``text_completion`` objects, or
their stream chunks, with the providers' metadata under ``quickllama`` (docs/SERVER.md).
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import Any

from qllm_core.errors import EmptyInputError
from qllm_core.inputs.documents import check_text
from qllm_core.memory.document import DocumentMemory
from qllm_core.results import Answer
from qllm_integrations.request import Request, usage
from qllm_integrations.routing import chat_request, split_request, text_request
from qllm_integrations.serve.documents import ServableEngine
from qllm_integrations.serve.openai_schema import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    too_large,
)
from qllm_integrations.settings import ProviderSettings, call_options
from qllm_integrations.split import PromptSplit

Body = ChatCompletionRequest | CompletionRequest

DONE = b"data: [DONE]\n\n"
"""The last event of every stream."""


def build_request(
    engine: ServableEngine,
    model_name: str,
    body: Body,
    defaults: ProviderSettings,
    document: tuple[str, DocumentMemory] | None = None,
) -> Request:
    """The provider request for ``body`` (``document``: the text and memory of its id).

    Raises:
        InvalidOptionError: an option's bad value (as the providers raise it).
        EmptyInputError, InvalidDocumentError: as the providers' routing raises them.
        APIError: 400 for ``mode`` or ``document`` beside a ``document_id``.
    """
    options = call_options(defaults, body.stops(), body.decoding())
    options = dataclasses.replace(
        options,
        max_evidence=options.max_evidence if body.max_sources is None else body.max_sources,
        read_once=options.read_once if body.read_once is None else body.read_once,
    )
    if document is not None:
        for name in ("mode", "document"):
            if getattr(body, name) is not None:
                raise APIError(
                    400,
                    f"{name} cannot be given with document_id: the document was read when it "
                    "was posted (post it again with another mode to read it so)",
                    "invalid_value",
                    param=name,
                )
        text, memory = document
        split = PromptSplit(document=text, question=_question(body), route="explicit")
        answering = dataclasses.replace(options, read_once=True, progress=False)
        request = split_request(engine, model_name, split, answering)
        request.use_memory(memory)
        return request
    if isinstance(body, ChatCompletionRequest):
        turns = [message.turn() for message in body.messages]
        return chat_request(engine, model_name, turns, options)
    return text_request(engine, model_name, body.prompt, options)


def check_document_tokens(engine: ServableEngine, request: Request, limit: int | None) -> None:
    """Refuse a request whose document (or whole prompt) is over ``--max-document-tokens``.

    A document from a ``document_id`` was checked when it was posted.
    """
    if limit is None or request.memory_use.memory is not None:
        return
    if request.split is None:
        tokens = len(request.input_ids)
    else:
        tokens = engine.count_tokens(request.split.document)
    if tokens > limit:
        raise too_large("the document's token count", tokens, limit, "--max-document-tokens")


def _question(body: Body) -> str:
    """The question asked about a ``document_id``."""
    if body.question is not None:
        return check_text("question", body.question)
    if isinstance(body, CompletionRequest):
        return check_text("prompt", body.prompt)
    asked = [text for role, text in (m.turn() for m in body.messages) if role == "user"]
    if not asked:
        raise EmptyInputError(
            "the chat has no user message to take the question from; add one, or pass "
            "question= explicitly"
        )
    return check_text("question", asked[-1])


def finish_reason(answer: Answer) -> str:
    """OpenAI's ``finish_reason``: ``length``, else ``stop`` (a stop string or the end)."""
    return "length" if answer.finish_reason == "length" else "stop"


def usage_body(request: Request, answer: Answer) -> dict[str, Any]:
    """OpenAI's ``usage``; ``cached_tokens``: document tokens from a memory already there."""
    counts = usage(answer)
    return {
        "prompt_tokens": counts["input_tokens"],
        "completion_tokens": counts["output_tokens"],
        "total_tokens": counts["total_tokens"],
        "prompt_tokens_details": {"cached_tokens": request.cache_read_tokens(answer)},
    }


class Reply:
    """The objects of one response: the whole one, or the chunks of its stream."""

    def __init__(self, chat: bool, model: str, request: Request) -> None:
        self.chat = chat
        self.model = model
        self.request = request
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def whole(self, answer: Answer) -> dict[str, Any]:
        """``chat.completion`` or ``text_completion``, with ``usage`` and ``quickllama``."""
        choice: dict[str, Any] = {"index": 0, "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": answer.text}
        else:
            choice["text"] = answer.text
        choice["finish_reason"] = finish_reason(answer)
        return {
            **self._head("chat.completion" if self.chat else "text_completion"),
            "choices": [choice],
            "usage": usage_body(self.request, answer),
            "quickllama": self.request.metadata(answer),
        }

    def opening(self) -> bytes:
        """A chat stream's first event (``delta.role``); nothing for completions."""
        return self._event({"role": "assistant", "content": ""}, None) if self.chat else b""

    def delta(self, text: str) -> bytes:
        """The event of one text delta."""
        return self._event({"content": text} if self.chat else text, None)

    def closing(self, answer: Answer, include_usage: bool) -> bytes:
        """The event with ``finish_reason`` and ``quickllama``, then the usage one if asked."""
        events = self._event({} if self.chat else "", finish_reason(answer), answer)
        if include_usage:
            chunk = {**self._chunk_head(), "choices": [], "usage": usage_body(self.request, answer)}
            events += sse(chunk)
        return events

    def _event(
        self, delta: dict[str, str] | str, finish: str | None, answer: Answer | None = None
    ) -> bytes:
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["delta"] = delta
        else:
            choice["text"] = delta
        choice["logprobs"] = None
        choice["finish_reason"] = finish
        chunk = {**self._chunk_head(), "choices": [choice]}
        if answer is not None:
            chunk["quickllama"] = self.request.metadata(answer)
        return sse(chunk)

    def _chunk_head(self) -> dict[str, Any]:
        return self._head("chat.completion.chunk" if self.chat else "text_completion")

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"
