"""The provider core: settings, options, route and request, shared by LangChain and LlamaIndex.

Both providers are translators. They turn their framework's messages into ``(role, text)``
turns (or take a plain prompt), call :func:`chat_request` or :func:`text_request`, and turn
the :class:`Request`'s stream and :meth:`Request.metadata` back into framework types.
Everything that decides something lives here, once:

- **Names.** One set of option names on both sides (:data:`GENERATION_NAMES`, plus
  ``question``/``document`` per call and the engine settings of :class:`ProviderSettings`).
  ``max_tokens`` is accepted as another spelling of ``max_new_tokens`` (LangChain's
  standard parameter); any other name raises
  :class:`~qllm_core.errors.InvalidOptionError` naming the closest valid one, at
  construction or at the call.
- **Route.** Explicit ``question=``/``document=`` first; else a prompt short enough for the
  local window is sent whole in the model's chat template (route ``direct``: Q-LLM then
  attends to every token, like the model's own attention); else it is split
  (:mod:`qllm_integrations.split`).
- **Roles.** ``system``, ``user``, ``assistant`` and ``tool``. A tool result is context:
  it is never taken as the question, and in a chat template it is a user turn that says it
  is a tool result.
- **Input checks.** Prompts, questions and documents go through
  :func:`qllm_core.documents.check_text`, so non-text and empty input raise the same named
  errors on both sides, before the engine is asked.
- **Read once.** With the setting ``read_once=True``, a split request reads its
  document through the engine's memory cache (``engine.memory_for``): the first question
  about a text reads it, question-free; later questions about the same text read only
  themselves, on from that memory. The metadata says which (``memory_reused``).

This module imports pydantic, but neither LangChain nor LlamaIndex nor torch.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from qllm_core.config import MODES, QLLMConfig
from qllm_core.documents import check_text
from qllm_core.errors import EmptyInputError, InvalidOptionError
from qllm_core.loading import EMBEDDED_MODEL_NAME
from qllm_core.options import ALIASES, GenerationOptions, check_choice, check_names, shown
from qllm_core.progress import ProgressListener, report_progress
from qllm_core.protocol import EngineProtocol, MemoryProtocol, TextStream
from qllm_core.results import Answer, AnswerStats
from qllm_core.spec import EngineSpec
from qllm_integrations.chat_template import chat_prompt_ids
from qllm_integrations.engines import get_engine
from qllm_integrations.evidence import Evidence, collect_evidence, plain_text
from qllm_integrations.progress import ReportingStream
from qllm_integrations.split import PromptSplit, split_chat, split_pattern, split_text

logger = logging.getLogger(__name__)

PROVIDER: Final = "quickllama"
"""``model_provider`` in every response's metadata."""

DIRECT: Final = "direct"
"""Route of prompts that fit the local window: sent whole, in the chat template."""

GENERATION_NAMES: tuple[str, ...] = (*GenerationOptions.names(), "mode")
"""Decoding options, as settings and per call: ``max_new_tokens``, ``min_new_tokens``,
``temperature``, ``top_p``, ``repetition_penalty``, ``no_repeat_ngram_size``, ``seed``,
``stop`` and ``mode``."""

CALL_NAMES: tuple[str, ...] = (*GENERATION_NAMES, "question", "document")
"""What a call accepts besides the prompt: the decoding options, ``question``, ``document``."""

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
"""Roles of the turns the providers pass in."""

_SHORT_CHARS_PER_TOKEN = 16
"""No tokenizer packs more characters than this into one token: longer texts skip counting."""


def resolve_aliases(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with aliases renamed (``max_tokens`` -> ``max_new_tokens``).

    Raises:
        InvalidOptionError: an option given under both of its names.
    """
    out = dict(values)
    for alias, name in ALIASES.items():
        if alias in out:
            if name in out:
                raise InvalidOptionError(f"give {name!r} or {alias!r}, not both (the same option)")
            out[name] = out.pop(alias)
    return out


class ProviderSettings(BaseModel):
    """The settings both providers' classes have, with the same names and meaning.

    Constructing with an unknown name raises :class:`~qllm_core.errors.InvalidOptionError`
    naming the closest valid one; an impossible value raises it (or ``ConfigError``) too.
    """

    model: str | None = None
    """Model source: ``None`` for the embedded SmolLM2-135M-Instruct; a local model
    directory, a ``.gguf`` file or a hub id otherwise."""
    config: QLLMConfig | str | None = None
    """Engine settings, or a preset name (``llama3``, ``mistral``, ``smollm2``, ...);
    ``None``: the engine's default for the model."""
    device: str | None = None
    """``cpu``, ``cuda``, ``cuda:1``, ...; ``None``: CUDA when available."""
    dtype: str | None = None
    """``float32``, ``bfloat16``, ``float16``; ``None``: float32 on CPU, bfloat16 on GPU."""
    max_new_tokens: int = 256
    """Most tokens to generate per answer (``max_tokens`` is accepted as well)."""
    min_new_tokens: int = 0
    """Tokens generated before the model's end-of-sequence token may end an answer."""
    temperature: float = 0.0
    """Sampling temperature; 0 is greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest token set with this much probability."""
    repetition_penalty: float = 1.0
    """Divides the logit of every token already in the answer (multiplies it when
    negative), ≥ 1; 1 is off. The prompt's tokens are not penalized."""
    no_repeat_ngram_size: int = 0
    """No run of this many tokens appears twice in an answer; 0 is off."""
    seed: int | None = None
    """Seed of the sampler, for reproducible sampling at temperature > 0."""
    stop: list[str] | None = None
    """Strings that end the answer (cut from it); a ``stop`` given per call replaces these."""
    mode: str | None = None
    """Attention mode of every request (``auto``, ``qllm``, ``infllm``, ``streaming``,
    ``full``); ``None`` keeps the engine config's mode."""
    max_evidence: int = Field(default=3, ge=0)
    """Most evidence passages in each response's metadata (``evidence``)."""
    read_once: bool = False
    """Read each document once and keep it: a request with a document (any route but
    ``direct``) takes the document's memory from the engine's cache
    (``engine.memory_for``), reading it question-free on a miss, and reads only the
    question on from it: follow-up questions cost their own tokens, not the document's.
    ``False`` (default, the more accurate on long documents, see BENCHMARKS.md): every
    question reads its document again, with the question before and after it (the
    paper's query-aware read, no memory kept)."""
    progress: bool = True
    """Show the read's progress while a request reads its document: the engine's bar (a
    widget in notebooks, on stderr on a terminal) and events to the framework (LangChain
    callbacks' ``on_custom_event`` named ``quickllama_progress``, LlamaIndex
    instrumentation's ``QLLMReadProgressEvent``); ``False``: neither."""

    _engine: EngineProtocol | None = PrivateAttr(default=None)

    def __init__(self, *, engine: EngineProtocol | None = None, **kwargs: Any) -> None:
        """Validate names and decoding options as a call would, then the rest; keep ``engine``.

        Every refusal is an :class:`~qllm_core.errors.InvalidOptionError` (or a
        ``ConfigError``), with the text a call with the same option gets. Framework classes
        put this class first among their bases, so this runs first.
        """
        checked = self._checked_kwargs(kwargs)
        try:
            super().__init__(**checked)
        except ValidationError as error:
            raise _option_error(error) from error
        self._engine = engine
        self.engine_spec()
        call_options(self, None, {})

    @classmethod
    def _checked_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments with aliases resolved and decoding options validated.

        Raises:
            InvalidOptionError: an unknown name, or a decoding option's bad value.
        """
        check_names(kwargs, tuple(cls.model_fields), where=cls.__name__, aliases=True)
        checked = resolve_aliases(kwargs)
        engine_options({k: v for k, v in checked.items() if k in GENERATION_NAMES})
        if isinstance(checked.get("stop"), str):
            checked["stop"] = [checked["stop"]]
        return checked

    def engine_spec(self) -> EngineSpec:
        """The :class:`~qllm_core.spec.EngineSpec` these settings describe."""
        preset = self.config if isinstance(self.config, str) else None
        config = self.config if isinstance(self.config, QLLMConfig) else None
        return EngineSpec(
            source=self.model, preset=preset, config=config, device=self.device, dtype=self.dtype
        )

    def get_engine(self) -> EngineProtocol:
        """The engine given at construction, else the shared one (loaded on first use)."""
        if self._engine is None:
            self._engine = get_engine(self.engine_spec())
        return self._engine

    def model_label(self) -> str:
        """The model's name, without loading it: the source, else the given engine's."""
        if self.model is not None:
            return self.model
        if self._engine is not None:
            return self._engine.model_name
        return EMBEDDED_MODEL_NAME

    def max_input_tokens(self) -> int:
        """The engine's prompt limit, known without loading the model."""
        if self._engine is not None:
            return self._engine.max_input_tokens
        return self.engine_spec().resolved_config().max_input_tokens

    def identifying_params(self) -> dict[str, Any]:
        """The settings, JSON-ready (the config as a dict or a preset name)."""
        config = self.config
        return {
            "model": self.model_label(),
            "source": self.model,
            "config": asdict(config) if isinstance(config, QLLMConfig) else config,
            **{
                name: getattr(self, name)
                for name in ("device", "dtype", *GENERATION_NAMES, "read_once")
            },
        }


@dataclass(frozen=True)
class CallOptions:
    """One call's validated options: the engine's keyword arguments and the explicit split."""

    engine_options: dict[str, Any]
    """``max_new_tokens``, ``min_new_tokens``, ``temperature``, ``top_p``,
    ``repetition_penalty``, ``no_repeat_ngram_size``, ``seed``, ``stop``, ``mode``."""
    question: str | None = None
    document: str | None = None
    max_evidence: int = 3
    """Most evidence passages in the response metadata (a setting, not a call option)."""
    read_once: bool = False
    """Whether a request with a document reads it through the engine's memory cache (a
    setting, not a call option)."""
    progress: bool = True
    """Whether the read's progress is shown and reported (a setting, not a call option)."""

    @property
    def explicit(self) -> bool:
        """Whether the caller said which part is the question or the document."""
        return self.question is not None or self.document is not None


def call_options(
    settings: ProviderSettings, stop: Sequence[str] | None, kwargs: Mapping[str, Any]
) -> CallOptions:
    """The settings overridden by one call's keyword arguments, validated.

    Args:
        settings: the provider object's settings.
        stop: a ``stop`` passed separately (LangChain does); it replaces the settings' stop.
        kwargs: the call's keyword arguments (names from :data:`CALL_NAMES`).

    Raises:
        InvalidOptionError: an unknown name (the closest valid one is named) or a bad value.
    """
    check_names(kwargs, CALL_NAMES, where="the call", aliases=True)
    given = resolve_aliases(kwargs)
    if stop is not None:
        given["stop"] = stop  # validated with the rest
    values = {name: given.get(name, getattr(settings, name)) for name in GENERATION_NAMES}
    return CallOptions(
        engine_options(values),
        given.get("question"),
        given.get("document"),
        settings.max_evidence,
        settings.read_once,
        settings.progress,
    )


def engine_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The decoding options and ``mode`` among ``values``, validated, as engine keywords.

    Raises:
        InvalidOptionError: the message the engine gives for the same value.
    """
    values = dict(values)
    mode = values.pop("mode", None)
    if mode is not None:
        check_choice("mode", mode, MODES)
    options = GenerationOptions.from_kwargs(**values)
    return {**asdict(options), "stop": list(options.stop) or None, "mode": mode}


def _option_error(error: ValidationError) -> InvalidOptionError:
    """Pydantic's refusal of a setting, worded like the other option errors."""
    first = error.errors()[0]
    name = ".".join(str(part) for part in first["loc"]) or "a setting"
    message = first["msg"][:1].lower() + first["msg"][1:]
    problem = f"is invalid ({message}), got {shown(first.get('input'))}"
    return InvalidOptionError.bad_value(name, problem)


@dataclass
class MemoryUse:
    """The document memory a request answered from, and whether it was there already."""

    memory: MemoryProtocol | None = None
    reused: bool | None = None
    """``True``: taken from the engine's cache or given; ``False``: read for this request."""


@dataclass(frozen=True)
class Request:
    """A request ready to run: the engine, its input, its options and its route."""

    engine: EngineProtocol
    model_name: str
    """Reported as ``model_name`` in the metadata."""
    route: str
    """How the question was found: a :data:`~qllm_integrations.split.Route` or ``direct``."""
    options: Mapping[str, Any]
    """The engine's keyword arguments."""
    split: PromptSplit | None = None
    """Document and question for ``engine.stream``; ``None`` on the direct route."""
    input_ids: tuple[int, ...] = field(default=())
    """Token ids for ``engine.stream_ids`` on the direct route."""
    max_evidence: int = 3
    """Most evidence passages in :meth:`metadata`."""
    read_once: bool = False
    """Read the document through the engine's memory cache (see :meth:`load_memory`)."""
    progress: bool = True
    """Show the read's progress bar and report it to the listener given to :meth:`start`."""
    memory_use: MemoryUse = field(default_factory=MemoryUse, compare=False, repr=False)
    """The memory this request answers from, once :meth:`start` (or :meth:`load_memory`,
    :meth:`use_memory`) chose it; empty on the per-question and direct routes."""

    @property
    def uses_memory(self) -> bool:
        """Whether the request answers from a document memory (a split with ``read_once``)."""
        return self.split is not None and self.read_once

    def load_memory(self) -> MemoryProtocol:
        """The document's memory: the one chosen already, else ``engine.memory_for``.

        ``engine.memory_for`` takes it from the engine's cache or reads the document now
        (in the request's ``mode``); :attr:`memory_use` records which.

        Raises:
            ValueError: the request has no document or does not read once.
        """
        if self.split is None or not self.read_once:
            raise ValueError("only a request with a document and read_once uses a memory")
        if self.memory_use.memory is None:
            memory, reused = self.engine.memory_for(
                self.split.document, mode=self.options.get("mode")
            )
            self.memory_use.memory, self.memory_use.reused = memory, reused
            logger.debug(
                "document %s: memory %s (%d tokens)",
                memory.document_sha256[:12],
                "reused" if reused else "read",
                memory.tokens,
            )
        return self.memory_use.memory

    def use_memory(self, memory: MemoryProtocol) -> None:
        """Answer from ``memory`` (kept by the caller: reported as reused), not the cache."""
        if self.split is None or not self.read_once:
            raise ValueError("only a request with a document and read_once uses a memory")
        self.memory_use.memory, self.memory_use.reused = memory, True

    def reporting(self, listener: ProgressListener | None = None) -> AbstractContextManager[None]:
        """The context the request's work runs in.

        The read's progress goes to ``listener`` and the engine's bar shows, unless
        :attr:`progress` is off (then neither).
        """
        return report_progress(listener if self.progress else None, bar=self.progress)

    def start(self, listener: ProgressListener | None = None) -> TextStream:
        """Start the request; iterate the stream for text, close it to stop early.

        With :attr:`uses_memory` the document's memory is found (or read) first, so the
        call may take as long as reading the document. ``listener`` receives the read's
        progress, here and while the stream runs (see :meth:`reporting`).
        """
        with self.reporting(listener):
            stream = self._open()
        if listener is None and self.progress:
            return stream
        return ReportingStream(stream, lambda: self.reporting(listener))

    def _open(self) -> TextStream:
        """The engine's stream for this request (a memory's is read first, if need be)."""
        if self.split is None:
            return self.engine.stream_ids(list(self.input_ids), **self.options)
        logger.debug(
            "route %s: %d document chars, question %r",
            self.route,
            len(self.split.document),
            self.split.question[:80],
        )
        if self.read_once:
            memory = self.load_memory()
            options = {k: v for k, v in self.options.items() if k != "mode"}
            return self.engine.stream(memory, self.split.question, **options)
        return self.engine.stream(self.split.document, self.split.question, **self.options)

    def run(self, listener: ProgressListener | None = None) -> Answer:
        """Run the request to its end (``listener``: as for :meth:`start`)."""
        with self.start(listener) as stream:
            return stream.collect()

    def metadata(self, answer: Answer) -> dict[str, Any]:
        """Model, finish reason, route, usage, memory use and the engine's stats, JSON-ready.

        The same dict on both sides: LangChain's ``response_metadata``, LlamaIndex's
        ``raw``. ``qllm`` is :func:`stats_dict`. ``memory_reused``: ``None`` when no
        document memory was used (``read_once=False``, route ``direct``), ``False`` when
        the document was read for this request, ``True`` when its memory was there
        already; with a memory, ``document_sha256`` names the document read.
        """
        metadata: dict[str, Any] = {
            "model_name": self.model_name,
            "model_provider": PROVIDER,
            "finish_reason": answer.finish_reason,
            "split_route": self.route,
            "usage": usage(answer),
            "evidence": [e.to_dict() for e in self.evidence(answer)],
            "memory_reused": self.memory_use.reused,
            "qllm": stats_dict(answer.stats),
        }
        if self.memory_use.memory is not None:
            metadata["document_sha256"] = self.memory_use.memory.document_sha256
        return metadata

    def cache_read_tokens(self, answer: Answer) -> int:
        """Input tokens taken from a memory that was there already (0 when read now)."""
        return answer.stats.memory_tokens if self.memory_use.reused else 0

    def evidence(self, answer: Answer) -> list[Evidence]:
        """The passages of the document most relevant to the question, best first."""
        if self.split is None:
            return []
        joined = plain_text(self.split.document)
        return collect_evidence(joined, answer.stats.retrieved_blocks, limit=self.max_evidence)


def answer_events(stream: TextStream) -> Generator[str | Answer, None, None]:
    """The stream's text deltas, then its :class:`Answer`; closing this closes the stream.

    A consumer that stops early (``break``, an exception, garbage collection of this
    generator) releases the engine at once.
    """
    with stream:
        yield from stream
        yield stream.collect()


def stats_dict(stats: AnswerStats) -> dict[str, Any]:
    """The stats as JSON-ready data, blocks included, plus ``seconds`` in all."""
    return {**asdict(stats), "seconds": stats.prefill_seconds + stats.decode_seconds}


def usage(answer: Answer) -> dict[str, int]:
    """Tokens read and generated: ``input_tokens``, ``output_tokens``, ``total_tokens``.

    ``input_tokens`` is the whole prompt: the tokens read for the request plus those taken
    from a document memory (``stats.memory_tokens``), as providers count cached input.
    """
    read = answer.stats.tokens_read + answer.stats.memory_tokens
    generated = answer.stats.tokens_generated
    return {"input_tokens": read, "output_tokens": generated, "total_tokens": read + generated}


def text_request(
    engine: EngineProtocol, model_name: str, prompt: object, options: CallOptions
) -> Request:
    """The request for a plain prompt.

    Every route refuses an empty document alike: a short prompt whose "Question:" line
    has nothing before it is refused as a long one is (:func:`split_pattern`).

    Raises:
        InvalidDocumentError, EmptyInputError: the prompt is not text, or is empty, or
            holds a question with an empty document.
    """
    if options.explicit and prompt == "":
        prompt_text = ""  # everything is explicit; the prompt may be empty
    else:
        prompt_text = check_text("prompt", prompt)
    if not options.explicit and fits_window(engine, prompt_text):
        split_pattern(prompt_text)  # raises for a labelled question without a document
        return _direct(engine, model_name, [("user", prompt_text)], options)
    split = split_text(prompt_text, question=options.question, document=options.document)
    return _split(engine, model_name, split, options)


def chat_request(
    engine: EngineProtocol,
    model_name: str,
    turns: Sequence[tuple[str, str]],
    options: CallOptions,
) -> Request:
    """The request for chat turns (``(role, text)``, role in :data:`ROLES`).

    Blank turns are left out (an assistant turn that only called tools). When turns
    other than the question are given, they are the document, and all of them blank is
    an empty document, refused on every route (:func:`_check_context`).

    Raises:
        InvalidDocumentError, EmptyInputError: a turn is not text; the question or the
            document is empty.
        ValueError: an unknown role.
    """
    turns = [(role, _checked_turn(role, text)) for role, text in turns]
    if not options.explicit:
        asked = [text for role, text in turns if role == "user"]
        if not asked:
            raise EmptyInputError(
                "the chat has no user message to take the question from; add one, or "
                "pass question= explicitly"
            )
        check_text("question", asked[-1])
        _check_context(turns)
        if fits_window(engine, "\n\n".join(text for _, text in turns)):
            return _direct(engine, model_name, turns, options)
    context = [("assistant" if role == "tool" else role, text) for role, text in turns]
    split = split_chat(context, question=options.question, document=options.document)
    return _split(engine, model_name, split, options)


def fits_window(engine: EngineProtocol, text: str) -> bool:
    """Whether ``text`` fits the local window, where Q-LLM equals full attention."""
    window = engine.config.n_local
    return len(text) <= window * _SHORT_CHARS_PER_TOKEN and engine.count_tokens(text) <= window


def _checked_turn(role: str, text: object) -> str:
    """``text`` checked as a turn's text; blank text counts as none (``""``)."""
    if role not in ROLES:
        raise ValueError(f"unknown chat role {role!r}; expected one of {ROLES}")
    if isinstance(text, str) and not text.strip():
        return ""
    return check_text(f"{role} message", text)


def _check_context(turns: Sequence[tuple[str, str]]) -> None:
    """Refuse a chat whose document is empty, whatever route it would take.

    The document is every turn but the last user message. With such turns, all blank
    (a ``{document}`` template filled with nothing), it is empty; with none, the question
    turn is the whole prompt, refused as a plain prompt is (:func:`split_pattern`).

    Raises:
        EmptyInputError: an empty document.
    """
    last_user = max(i for i, (role, _) in enumerate(turns) if role == "user")
    context = [text for i, (_, text) in enumerate(turns) if i != last_user]
    if not context:
        split_pattern(turns[last_user][1])
    elif not any(context):
        raise EmptyInputError(
            "the document is empty: the messages before the question (system messages, "
            "earlier turns, attached documents) hold no text; put the text to read in "
            "them, or pass document= explicitly"
        )


def _direct(
    engine: EngineProtocol,
    model_name: str,
    turns: Sequence[tuple[str, str]],
    options: CallOptions,
) -> Request:
    ids = chat_prompt_ids(engine.tokenizer, [(r, t) for r, t in turns if t.strip()])
    return Request(
        engine,
        model_name,
        DIRECT,
        options.engine_options,
        input_ids=tuple(ids),
        max_evidence=options.max_evidence,
        progress=options.progress,
    )


def _split(
    engine: EngineProtocol, model_name: str, split: PromptSplit, options: CallOptions
) -> Request:
    check_text("document", split.document)
    check_text("question", split.question)
    return Request(
        engine,
        model_name,
        split.route,
        options.engine_options,
        split=split,
        max_evidence=options.max_evidence,
        read_once=options.read_once,
        progress=options.progress,
    )
