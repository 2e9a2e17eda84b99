"""One request, built and checked before anything is read.

:class:`RequestBuilder` turns what a caller passes (a document's text and a question, a
document memory and a question, or token ids) into one :class:`Request`: the prompt's
token ids, the spans the memory must know (:class:`~qllm_core.memory.request.RequestPlan`),
the concrete mode and the generation options. Every check that can fail before the read
runs here: prompt length, the mode ``auto`` resolves to, whether the keys and values fit,
whether the re-read prompt fits the model's window.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PretrainedConfig

from ..config import QLLMConfig
from ..errors import ConfigError, InputTooLongError, InsufficientMemoryError
from ..inputs.documents import check_text
from ..inputs.prompt import (
    DocumentPrompt,
    PromptLayout,
    build_document_prompt,
    build_prompt,
    encode_text,
)
from ..inputs.validation import question_span as checked_span
from ..inputs.validation import token_ids
from ..memory.capacity import NO_KV, KVNeed, check_fits
from ..memory.document import QUESTION_ROOM, DocumentMemory
from ..memory.request import RequestPlan
from ..modes import mode_spec, resolve
from ..options import GenerationOptions
from .reread import SEPARATOR, check_reread_fits


@dataclass(frozen=True)
class Request:
    """One question to answer: what to read and how.

    ``ids``: the whole prompt, of which the first :attr:`memory_tokens` come from
    ``memory`` (already read); ``layout``: where the document and question lie in it
    (``None`` for a prompt given as ids); ``config``: its mode concrete; ``reread_into``:
    the prompt the passages are re-read in, when not ``layout`` (after a memory: the
    per-question prompt).
    """

    ids: list[int]
    plan: RequestPlan
    config: QLLMConfig
    options: GenerationOptions
    layout: PromptLayout | None = None
    memory: DocumentMemory | None = None
    reread_into: PromptLayout | None = None
    kv: KVNeed = NO_KV
    """The keys and values it will keep (held while it runs: :mod:`~qllm_core.memory.admission`)."""
    stop: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)
    """Set (by :meth:`~qllm_core.results.AnswerStream.cancel`, from any thread) to stop the
    request: its reads stop between prefill chunks."""

    @property
    def memory_tokens(self) -> int:
        """Prompt tokens held by the document memory (0 without one)."""
        return self.memory.tokens if self.memory is not None else 0

    @property
    def rereads(self) -> bool:
        """Whether the read is followed by a re-read of the passages it ranked."""
        return self.layout is not None and rereads(self.config)


def rereads(config: QLLMConfig) -> bool:
    """Whether requests under ``config`` re-read (a mode whose read keeps blocks to rank)."""
    return config.reread_tokens > 0 and mode_spec(config.mode).rereads


@dataclass(frozen=True)
class RequestBuilder:
    """Builds an engine's requests: its tokenizer, config and model limits."""

    tokenizer: Any
    config: QLLMConfig
    model_config: PretrainedConfig
    device: torch.device
    dtype: torch.dtype
    vocab_size: int

    def for_text(
        self, document: str, question: str, mode: str | None, options: GenerationOptions
    ) -> Request:
        """The paper's query-aware read: question, document, question (texts checked)."""
        layout = build_prompt(self.tokenizer, document, question)
        tokens = len(layout.input_ids)
        config = self._config("the prompt has", mode, tokens, options.max_new_tokens)
        if rereads(config):
            self._check_reread_fits(layout, config, options.max_new_tokens)
        kv = self._check_fits(tokens, options.max_new_tokens, config)
        plan = RequestPlan(
            question_span=layout.question_span,
            record_from=layout.final_question_span[0],
            rank_span=_rank_span(layout, config),
        )
        return Request(layout.input_ids, plan, config, options, layout=layout, kv=kv)

    def for_ids(
        self,
        input_ids: Any,
        question_span: tuple[int, int] | None,
        mode: str | None,
        options: GenerationOptions,
    ) -> Request:
        """A prompt given as token ids; ``question_span`` locates the question in it."""
        ids = token_ids(input_ids, self.vocab_size)
        span = checked_span(question_span, len(ids))
        config = self._config("the prompt has", mode, len(ids), options.max_new_tokens)
        kv = self._check_fits(len(ids), options.max_new_tokens, config)
        plan = RequestPlan(question_span=span, record_from=span[1] if span else len(ids))
        return Request(ids, plan, config, options, kv=kv)

    def for_memory(
        self, memory: DocumentMemory, question: str, mode: str | None, options: GenerationOptions
    ) -> Request:
        """A question read on from ``memory`` (the question after the document).

        ``mode`` must be ``None``: the memory was read in its own mode.
        """
        if mode is not None:
            raise ConfigError(
                f"mode={mode!r} cannot apply to a document memory: it was read in mode "
                f"{memory.mode!r}; read the document again with engine.read(text, "
                f"mode={mode!r})"
            )
        question = check_text("question", question)
        layout = memory.prompt.with_question(self.tokenizer, question)
        ids, config = layout.input_ids, memory.config
        window = self.window_tokens(config)
        if not mode_spec(config.mode).block_memory and len(ids) + options.max_new_tokens > window:
            raise InputTooLongError(
                f"the document was read with the model's own attention, and with the question "
                f"and max_new_tokens={options.max_new_tokens:,} the prompt ({len(ids):,} tokens) "
                f"passes its {window:,}-token window; shorten the question, "
                "lower max_new_tokens, or read the document with mode='qllm'"
            )
        reread_into = None
        if rereads(config):
            reread_into = memory.prompt.question_first(self.tokenizer, question)
            self._check_reread_fits(reread_into, config, options.max_new_tokens)
        plan = RequestPlan(
            question_span=layout.question_span,
            record_from=layout.question_span[1],
            rank_span=_rank_span(layout, config),
        )
        return Request(
            ids, plan, config, options, layout=layout, memory=memory, reread_into=reread_into
        )

    def for_document(
        self, document: str, mode: str | None
    ) -> tuple[DocumentPrompt, QLLMConfig, KVNeed]:
        """The prompt and config of a question-free read of ``document``.

        As :meth:`QLLMEngine.read` reads it: :data:`QUESTION_ROOM` tokens are left for each
        question.
        """
        prompt = build_document_prompt(self.tokenizer, document)
        tokens = len(prompt.input_ids)
        config = self._config("the document takes", mode, tokens, QUESTION_ROOM)
        return prompt, config, self._check_fits(tokens, QUESTION_ROOM, config)

    def window_tokens(self, config: QLLMConfig | None = None) -> int:
        """Longest prompt plus answer read with the model's own attention in mode ``auto``."""
        config = config or self.config
        if config.full_attention_max_tokens is not None:
            return config.full_attention_max_tokens
        trained = getattr(self.model_config, "max_position_embeddings", None)
        if not isinstance(trained, int):
            raise ConfigError(
                "the model's config has no max_position_embeddings; set "
                "QLLMConfig.full_attention_max_tokens to its trained context"
            )
        return trained

    def _config(
        self, what: str, mode: str | None, prompt_tokens: int, new_tokens: int
    ) -> QLLMConfig:
        """The request's config: ``mode`` applied, its length checked, the mode concrete.

        ``auto`` resolves by ``prompt_tokens`` plus ``new_tokens``; ``what`` names the
        prompt in the length error.
        """
        config = self.config if mode is None else self.config.replace(mode=mode)
        layers = self.model_config.get_text_config().num_hidden_layers
        if config.reread_layers and max(config.reread_layers) >= layers:
            raise ConfigError(
                f"reread_layers={config.reread_layers} names a layer past the model's "
                f"{layers} (0 to {layers - 1}); drop it or set reread_layers=None"
            )
        if prompt_tokens > config.max_input_tokens:
            raise InputTooLongError(
                f"{what} {prompt_tokens:,} tokens, over max_input_tokens="
                f"{config.max_input_tokens:,}; shorten the document or raise "
                "QLLMConfig.max_input_tokens"
            )
        fits = prompt_tokens + new_tokens <= self.window_tokens(config)
        return config.replace(mode=resolve(config.mode, fits))

    def _check_fits(self, prompt_tokens: int, new_tokens: int, config: QLLMConfig) -> KVNeed:
        """``check_fits`` for prompt plus answer, naming ``max_new_tokens`` when it is the cause."""
        fits = functools.partial(
            check_fits,
            model_config=self.model_config,
            config=config,
            device=self.device,
            dtype=self.dtype,
        )
        try:
            return fits(prompt_tokens + new_tokens)
        except InsufficientMemoryError as error:
            fits(prompt_tokens)  # the prompt alone fails: raised as is
            raise InsufficientMemoryError(
                f"max_new_tokens={new_tokens:,} does not fit: the prompt's "
                f"{prompt_tokens:,} tokens fit, but not with that many new ones; lower "
                f"max_new_tokens ({error})"
            ) from error

    def _check_reread_fits(
        self, layout: PromptLayout, config: QLLMConfig, max_new_tokens: int
    ) -> None:
        separator = len(encode_text(self.tokenizer, SEPARATOR))
        window = self.window_tokens(config)
        check_reread_fits(layout, config, max_new_tokens, window, separator)


def _rank_span(layout: PromptLayout, config: QLLMConfig) -> tuple[int, int] | None:
    """The final question's span, whose queries rank the memory blocks.

    Block memory only: a ``full`` read records them with a ``QuestionAttention`` instead.
    """
    return layout.final_question_span if mode_spec(config.mode).block_memory else None
