"""``QLLM``: the Q-LLM engine as a LlamaIndex ``CustomLLM``.

Every call is split into the document to read and the question to answer (see
:mod:`.messages`), then answered by the engine in one pass over the whole document. The
blocking engine runs in a worker thread for the async methods, so the event loop stays free.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.prompts.base import BasePromptTemplate

from qllm_integrations.split import PromptSplit

from .._async import iterate_in_thread, run_in_thread
from .guards import GuardPolicy, check_call
from .messages import add_template_hint, split_messages, split_prompt

if TYPE_CHECKING:
    from qllm_core import Answer, AnswerStream
    from qllm_core.engine import QLLMEngine

logger = logging.getLogger(__name__)

_OPTIONS = ("max_new_tokens", "temperature", "top_p", "seed", "stop", "mode")
"""Per-call keyword arguments passed on to the engine."""
_SPLIT_ARGS = ("question", "document")


class QLLM(CustomLLM):
    """Query-aware long-context LLM: reads up to ``max_input_tokens`` in one call.

    The engine is shared process-wide by ``(source, config, device, dtype)`` and loaded on
    first use, not here. Pass ``engine=`` to use one you loaded yourself.

    Per call, ``question=`` and ``document=`` keyword arguments say which part of the prompt
    is which; otherwise the question is found in LlamaIndex's templates ("Query: ...") or
    in the last user message.
    """

    source: str | None = None
    """Model: ``None`` for the embedded SmolLM2-135M-Instruct, or a local dir, .gguf, hub id."""
    config: Any = None
    """``qllm_core.QLLMConfig``, or ``None`` for the engine's default for ``source``."""
    device: str | None = None
    """``"cpu"``, ``"cuda"``, ...; ``None``: CUDA when available."""
    dtype: str | None = None
    """``"float32"``, ``"bfloat16"``, ...; ``None``: the engine's default."""
    max_new_tokens: int = 256
    """Most tokens generated per answer (LlamaIndex's ``num_output``)."""
    temperature: float = 0.0
    """Sampling temperature; 0 is greedy."""
    top_p: float = 1.0
    """Nucleus sampling threshold."""
    seed: int | None = None
    """Sampling seed, for repeatable answers at temperature > 0."""
    stop: list[str] | None = None
    """Strings that end the answer (cut from it)."""
    mode: str | None = None
    """Attention mode override: ``qllm``, ``infllm``, ``streaming`` or ``full``."""
    guard: GuardPolicy = "warn"
    """When LlamaIndex would split or truncate the text: ``warn``, ``raise`` or ``off``."""

    _engine: Any = PrivateAttr(default=None)

    def __init__(self, *, engine: QLLMEngine | None = None, **data: Any) -> None:
        super().__init__(**data)
        self._engine = engine

    @classmethod
    def class_name(cls) -> str:
        """Name used by LlamaIndex's serialization."""
        return "quickllama_qllm"

    @property
    def engine(self) -> QLLMEngine:
        """The engine (loaded on first access, then shared)."""
        if self._engine is None:
            from qllm_integrations.engines import get_engine

            self._engine = get_engine(
                self.source, config=self.config, device=self.device, dtype=self.dtype
            )
        return self._engine

    @property
    def metadata(self) -> LLMMetadata:
        """The engine's real input limit as ``context_window`` (never the trained context)."""
        engine = self.engine
        return LLMMetadata(
            context_window=engine.max_input_tokens,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            model_name=engine.model_name,
        )

    def to_payload(self) -> dict[str, Any]:
        """What LlamaIndex's events report about this LLM; never loads the engine.

        (The default reads ``metadata``, which would load the model on the event loop the
        first time an async method is called.)
        """
        payload: dict[str, Any] = {
            "class_name": self.class_name(),
            "source": self.source,
            "num_output": self.max_new_tokens,
            "is_chat_model": True,
        }
        if self._engine is not None:
            payload.update(
                context_window=self._engine.max_input_tokens, model_name=self._engine.model_name
            )
        return payload

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """Answer the question found in ``prompt`` about the rest of it."""
        split = split_prompt(prompt, **_split_args(kwargs))
        return _completion(self._answer(split, kwargs), split)

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        """Like :meth:`complete`, yielding the answer piece by piece."""
        split = split_prompt(prompt, **_split_args(kwargs))
        return self._stream_completions(split, kwargs)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer the last user message about the earlier messages (or its own context)."""
        split = split_messages(messages, **_split_args(kwargs))
        return _chat(_completion(self._answer(split, kwargs), split))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """Like :meth:`chat`, yielding the answer piece by piece."""
        split = split_messages(messages, **_split_args(kwargs))
        return (_chat(r) for r in self._stream_completions(split, kwargs))

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        """:meth:`complete` with the engine in a worker thread."""
        split = split_prompt(prompt, **_split_args(kwargs))
        return _completion(await run_in_thread(self._answer, split, kwargs), split)

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        """:meth:`stream_complete` with the engine in a worker thread."""
        split = split_prompt(prompt, **_split_args(kwargs))
        return iterate_in_thread(lambda: self._stream_completions(split, kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """:meth:`chat` with the engine in a worker thread."""
        split = split_messages(messages, **_split_args(kwargs))
        return _chat(_completion(await run_in_thread(self._answer, split, kwargs), split))

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        """:meth:`stream_chat` with the engine in a worker thread."""
        split = split_messages(messages, **_split_args(kwargs))

        async def chats() -> ChatResponseAsyncGen:
            async for response in iterate_in_thread(
                lambda: self._stream_completions(split, kwargs)
            ):
                yield _chat(response)

        return chats()

    def _get_messages(self, prompt: BasePromptTemplate, **prompt_args: Any) -> list[ChatMessage]:
        """Render a template (``predict`` and friends), check it, and mark its split."""
        messages = super()._get_messages(prompt, **prompt_args)
        prompt_type = prompt.metadata.get("prompt_type")
        prompt_type = getattr(prompt_type, "value", prompt_type)
        check_call(self, prompt_type, self.guard)
        variables = {**getattr(prompt, "kwargs", {}), **prompt_args}
        return add_template_hint(messages, variables, prompt_type)

    def generation_options(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Keyword arguments for ``engine.answer``: the fields, then per-call overrides."""
        options: dict[str, Any] = {name: getattr(self, name) for name in _OPTIONS}
        overrides = dict(overrides or {})
        if "max_tokens" in overrides:
            options["max_new_tokens"] = overrides.pop("max_tokens")
        options.update({k: overrides.pop(k) for k in _OPTIONS if k in overrides})
        if overrides:
            logger.debug("QLLM ignores keyword arguments %s", sorted(overrides))
        return options

    def _answer(self, split: PromptSplit, kwargs: dict[str, Any]) -> Answer:
        return self.engine.answer(split.document, split.question, **self.generation_options(kwargs))

    def _stream_completions(
        self, split: PromptSplit, kwargs: dict[str, Any]
    ) -> Generator[CompletionResponse, None, None]:
        """Start the engine's stream now (so bad input raises here) and wrap its pieces."""
        stream = self.engine.stream(
            split.document, split.question, **self.generation_options(kwargs)
        )
        return _completion_chunks(stream, split)


def usage(answer: Answer, split: PromptSplit) -> dict[str, Any]:
    """The ``raw`` of a response: usage, finish reason, split route and stats.

    ``usage`` is OpenAI-style, which LlamaIndex's token counter reads instead of
    re-tokenizing the whole document.
    """
    stats = answer.stats
    return {
        "usage": {
            "prompt_tokens": stats.tokens_read,
            "completion_tokens": stats.tokens_generated,
            "total_tokens": stats.tokens_read + stats.tokens_generated,
        },
        "finish_reason": answer.finish_reason,
        "split_route": split.route,
        "stats": dataclasses.asdict(stats),
    }


def _completion_chunks(
    stream: AnswerStream, split: PromptSplit
) -> Generator[CompletionResponse, None, None]:
    """Completion chunks; the last one carries the usage (one piece is held back for it)."""
    text, held = "", None
    try:
        for piece in stream:
            if held is not None:
                yield CompletionResponse(text=text, delta=held)
            text, held = text + piece, piece
    finally:
        # Closing the engine's generator now releases its lock even when the consumer
        # stops early (waiting for garbage collection could hold it indefinitely).
        close = getattr(stream.pieces, "close", None)
        if callable(close):
            close()
    assert stream.result is not None, "the engine's stream ended without a result"
    final = _completion(stream.result, split)
    final.delta = held or ""
    yield final


def _completion(answer: Answer, split: PromptSplit) -> CompletionResponse:
    return CompletionResponse(text=answer.text, raw=usage(answer, split))


def _chat(response: CompletionResponse) -> ChatResponse:
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, content=response.text),
        delta=response.delta,
        raw=response.raw,
    )


def _split_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove ``question=``/``document=`` from ``kwargs`` and return them."""
    return {name: kwargs.pop(name) for name in _SPLIT_ARGS if name in kwargs}
