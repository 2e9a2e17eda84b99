"""``QLLM``: the Q-LLM engine as a LlamaIndex ``CustomLLM``.

A translator: LlamaIndex prompts and chat messages become a prompt or ``(role, text)``
turns for the provider core (:mod:`qllm_integrations.routing`), which decides the route
and builds the request that runs the engine; its answer becomes a LlamaIndex response whose
``raw`` is the same metadata the LangChain provider reports.

Templated calls (``llm.predict(template, context_str=..., query_str=...)``, which every
response synthesizer makes) are split exactly: the template's own ``query_str`` is the
question and its ``context_str`` the document, handed to the chat call ``predict`` makes.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    DocumentBlock,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.prompts.base import BasePromptTemplate
from llama_index.core.types import TokenAsyncGen, TokenGen

from qllm_core.protocol import EngineProtocol
from qllm_core.results import Answer
from qllm_integrations._async import iterate_in_thread, run_in_thread
from qllm_integrations.content import attached_text, is_text_mimetype, join_blocks, not_text
from qllm_integrations.request import ProviderRequest, answer_events
from qllm_integrations.routing import provider_chat_request, provider_text_request
from qllm_integrations.settings import CallOptions, ProviderSettings, call_options

from .guards import GuardPolicy, check_call
from .progress import report_read

_TEMPLATE: ContextVar[tuple[QLLM, dict[str, Any] | None] | None] = ContextVar(
    "quickllama_template", default=None
)
"""The QLLM whose templated call (``predict`` and friends) runs now, and its split."""

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}
_DOCUMENT_KEYS = ("context_str", "context_msg")
"""Template variables that hold the retrieved text (QA/summary and refine templates)."""


class QLLM(ProviderSettings, CustomLLM):
    """Query-aware long-context LLM: reads up to ``max_input_tokens`` in one call.

    The settings are those of the LangChain provider, with the same names (see
    :class:`~qllm_integrations.settings.ProviderSettings`). The engine is shared
    process-wide and loaded on first use, not here; pass ``engine=`` to use one you built.

    Per call, ``question=`` and ``document=`` say which part of the prompt is which;
    otherwise the question is found in LlamaIndex's templates or the last user message. A
    prompt that fits the local window is answered whole (route ``direct``).

    With ``read_once=True`` a document is read once, question-free, and kept in
    the engine's memory cache, so a second question about the same text reads only
    itself (``raw["memory_reused"]``); ``read_once=False`` reads it again per question,
    with the question before and after it.

    With ``base_url`` (a ``quickllama serve``, e.g. ``"http://127.0.0.1:8000/v1"``) and
    ``api_key`` (default ``$QUICKLLAMA_API_KEY``), no model is loaded here: every request
    goes to that server, with the same options, streaming, metadata and named errors, plus
    :class:`~qllm_integrations.remote.ServerBusyError` (its queue is full) and
    :class:`~qllm_integrations.remote.ServerUnavailableError`; ``timeout`` and
    ``max_retries`` apply to it.
    """

    guard: GuardPolicy = "warn"
    """When LlamaIndex would split or truncate the text: ``warn`` (once per QLLM),
    ``raise`` or ``off``."""

    _warned: set[str] = PrivateAttr(default_factory=set)

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex's serialization."""
        return "quickllama_qllm"

    @property
    def engine(self) -> EngineProtocol:
        """The engine (loaded on first access, then shared)."""
        return self.get_engine()

    @property
    def metadata(self) -> LLMMetadata:
        """The engine's real input limit as ``context_window`` (never the trained context)."""
        return LLMMetadata(
            context_window=self.max_input_tokens(),
            num_output=self.max_new_tokens,
            is_chat_model=True,
            model_name=self.model_label(),
        )

    def to_payload(self) -> dict[str, Any]:
        """What LlamaIndex's events report about this LLM; never loads the engine."""
        return {
            "class_name": self.class_name(),
            **self.identifying_params(),
            "num_output": self.max_new_tokens,
            "is_chat_model": True,
        }

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Answer the question found in ``prompt`` about the rest of it."""
        request = self._text(prompt, kwargs)
        return _completion(request, request.run(report_read))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        """Like :meth:`complete`, yielding the answer piece by piece."""
        request = self._text(prompt, kwargs)
        return _chunks(request, answer_events(request.start(report_read)))

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer the last user message about the earlier messages (or its own context)."""
        request = self._chat(messages, kwargs)
        return _chat(_completion(request, request.run(report_read)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Like :meth:`chat`, yielding the answer piece by piece."""
        request = self._chat(messages, kwargs)
        return (_chat(r) for r in _chunks(request, answer_events(request.start(report_read))))

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        """:meth:`complete` with the request built in a worker thread and run async."""
        request = await run_in_thread(self._text, prompt, kwargs)
        return _completion(request, await request.arun(report_read))

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """:meth:`stream_complete` with the request built and run in a worker thread."""
        request = await run_in_thread(self._text, prompt, kwargs)
        return iterate_in_thread(
            lambda: _chunks(request, answer_events(request.start(report_read)))
        )

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """:meth:`chat` with the request built in a worker thread and run async."""
        request = await run_in_thread(self._chat, messages, kwargs)
        return _chat(_completion(request, await request.arun(report_read)))

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        """:meth:`stream_chat` with the request built and run in a worker thread."""
        request = await run_in_thread(self._chat, messages, kwargs)

        async def chats() -> ChatResponseAsyncGen:
            async for response in iterate_in_thread(
                lambda: _chunks(request, answer_events(request.start(report_read)))
            ):
                yield _chat(response)

        return chats()

    # Templated calls: LlamaIndex renders the template and calls chat() with the text, so
    # the template's own query_str and context_str are handed to that call by a context
    # variable, set around LlamaIndex's public predict/stream methods.
    def predict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        """LlamaIndex's ``predict``, the template's question and context kept apart."""
        with self._template(prompt, prompt_args):
            return super().predict(prompt, **prompt_args)

    def stream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenGen:
        """LlamaIndex's ``stream``, the template's question and context kept apart."""
        with self._template(prompt, prompt_args):
            return super().stream(prompt, **prompt_args)

    async def apredict(self, prompt: BasePromptTemplate, **prompt_args: Any) -> str:
        """LlamaIndex's ``apredict``, the template's question and context kept apart."""
        with self._template(prompt, prompt_args):
            return await super().apredict(prompt, **prompt_args)

    async def astream(self, prompt: BasePromptTemplate, **prompt_args: Any) -> TokenAsyncGen:
        """LlamaIndex's ``astream``, the template's question and context kept apart."""
        with self._template(prompt, prompt_args):
            return await super().astream(prompt, **prompt_args)

    @contextmanager
    def _template(
        self, prompt: BasePromptTemplate, prompt_args: Mapping[str, Any]
    ) -> Iterator[None]:
        """Check a templated call, and hand its split to the chat call made inside."""
        prompt_type = prompt.metadata.get("prompt_type")
        prompt_type = getattr(prompt_type, "value", prompt_type)
        check_call(prompt_type, self.guard, self._warned)
        variables = {**prompt.kwargs, **prompt_args}
        token = _TEMPLATE.set((self, template_split(variables, prompt_type)))
        try:
            yield
        finally:
            _TEMPLATE.reset(token)

    def _text(self, prompt: object, kwargs: dict[str, Any]) -> ProviderRequest:
        options = call_options(self, kwargs.pop("stop", None), kwargs)
        return provider_text_request(self, prompt, options)

    def _chat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ProviderRequest:
        options = call_options(self, kwargs.pop("stop", None), kwargs)
        template = _TEMPLATE.get()
        hint = template[1] if template is not None and template[0] is self else None
        if not options.explicit and hint is not None:
            if hint.get("document") is not None and hint.get("prompt_type") != "refine":
                hinted = CallOptions(**{**vars(options), **_question_document(hint)})
                return provider_text_request(self, "", hinted)
            # A refine prompt also carries the previous answer: the whole rendered text
            # is the document, the template's question the question.
            options = CallOptions(**{**vars(options), "question": hint["question"]})
        return provider_chat_request(self, flatten_messages(messages), options)


def _question_document(hint: Mapping[str, Any]) -> dict[str, Any]:
    return {"question": hint["question"], "document": hint["document"]}


def _chunks(
    request: ProviderRequest, events: Generator[str | Answer, None, None]
) -> Generator[CompletionResponse, None, None]:
    """Completion chunks; the last one carries ``raw`` (one piece is held back for it)."""
    text, held = "", None
    for item in events:
        if isinstance(item, Answer):
            final = _completion(request, item)
            final.delta = held or ""
            yield final
            return
        if held is not None:
            yield CompletionResponse(text=text, delta=held)
        text, held = text + item, item


def _completion(request: ProviderRequest, answer: Answer) -> CompletionResponse:
    return CompletionResponse(text=answer.text, raw=request.metadata(answer))


def _chat(response: CompletionResponse) -> ChatResponse:
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, content=response.text),
        delta=response.delta,
        raw=response.raw,
    )


def template_split(
    prompt_args: Mapping[str, Any], prompt_type: str | None
) -> dict[str, Any] | None:
    """The template's question and context, or ``None`` without a string ``query_str``.

    A context variable given but blank is passed on as an empty document (``""``), which
    the request refuses (no answer from nothing).
    """
    question = prompt_args.get("query_str")
    if not isinstance(question, str) or not question.strip():
        return None
    texts = [t for t in (_text(prompt_args.get(k)) for k in _DOCUMENT_KEYS) if t is not None]
    document = next((t for t in texts if t.strip()), "" if texts else None)
    return {"question": question, "document": document, "prompt_type": prompt_type}


def flatten_messages(messages: Sequence[ChatMessage]) -> list[tuple[str, str]]:
    """``(role, text)`` turns for the provider core (content as :mod:`..content` says).

    Text blocks of one message are joined by newlines; a text document block becomes a
    turn of its own, placed before the rest of its message.

    Raises:
        InvalidDocumentError: a block that is not text (image, audio, PDF, ...), or a
            document block that is not UTF-8 text.
        EmptyInputError: a document block holds no text.
    """
    turns: list[tuple[str, str]] = []
    for message in messages:
        role = _ROLES.get(MessageRole(message.role), "user")
        texts: list[str] = []
        for block in message.blocks:
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, DocumentBlock) and is_text_mimetype(block.document_mimetype):
                raw = block.resolve_document().read()
                turns.append((role, attached_text(raw, block.title or "attached document")))
            else:
                raise not_text(type(block).__name__, role)
        turns.append((role, join_blocks(texts)))
    return turns


def _text(value: object) -> str | None:
    """A template variable as text: a string, or a list of strings joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return None
