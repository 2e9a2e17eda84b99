"""Provider settings and per-call options: one set of names and checks for both frameworks.

One set of option names on both sides (:data:`GENERATION_NAMES`, plus ``question``/
``document`` per call and the engine settings of :class:`ProviderSettings`).
``max_tokens`` is accepted as another spelling of ``max_new_tokens`` (LangChain's standard
parameter); any other name raises :class:`~qllm_core.errors.InvalidOptionError` naming the
closest valid one, at construction or at the call.

This module imports pydantic, but neither LangChain nor LlamaIndex nor torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr, SecretStr, ValidationError

from qllm_core.config import MODES, QLLMConfig
from qllm_core.errors import ConfigError, InvalidOptionError
from qllm_core.inputs.prompt import encode_chat, encode_text
from qllm_core.models.loading import EMBEDDED_MODEL_NAME
from qllm_core.options import ALIASES, GenerationOptions, check_choice, check_names, shown
from qllm_core.protocol import EngineProtocol
from qllm_core.spec import EngineSpec
from qllm_integrations.engines import get_engine
from qllm_integrations.remote import RemoteClient, ServerSpec, client_for

GENERATION_NAMES: tuple[str, ...] = (*GenerationOptions.names(), "mode")
"""Decoding options, as settings and per call: ``max_new_tokens``, ``min_new_tokens``,
``temperature``, ``top_p``, ``repetition_penalty``, ``no_repeat_ngram_size``, ``seed``,
``stop`` and ``mode``."""

API_KEY_ENV_VAR = "QUICKLLAMA_API_KEY"
"""Where ``api_key`` is read from when not given (the server reads its keys there too)."""

SERVER_SIDE: tuple[str, ...] = ("config", "device", "dtype")
"""Engine settings that belong to the server (``quickllama serve`` flags) with ``base_url``."""

CALL_NAMES: tuple[str, ...] = (*GENERATION_NAMES, "question", "document")
"""What a call accepts besides the prompt: the decoding options, ``question``, ``document``."""


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
    repetition_penalty: float | None = None
    """Divides the logit of every token already in the answer (multiplies it when
    negative), ≥ 1; 1 is off. The prompt's tokens are not penalized. ``None``: the
    engine's default (``engine.generation_defaults``: off)."""
    no_repeat_ngram_size: int | None = None
    """No run of this many tokens appears twice in an answer; 0 is off. ``None``: the
    engine's default (``engine.generation_defaults``: 6 for the embedded model, else off)."""
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

    base_url: str | None = None
    """A quickllama server to send every request to (``quickllama serve``), e.g.
    ``http://127.0.0.1:8000/v1``: no model is loaded here, ``model`` names the served model
    (``None``: whichever it serves) and ``config``/``device``/``dtype`` are the server's.
    ``None``: the engine runs in this process."""
    api_key: SecretStr | None = Field(default_factory=lambda: _api_key_from_env(), exclude=True)
    """The server's API key (``base_url`` only); default: ``$QUICKLLAMA_API_KEY``. Never
    serialized, shown or reported (a secret)."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds a request to the server may wait for its next bytes (``base_url`` only;
    ``None``: 600). A local engine has no timeout (a warning says so)."""
    max_retries: int | None = Field(default=None, ge=0)
    """Retries of a request the server refused as busy (429) or unavailable (502, 503), or
    that met a network error (``base_url`` only; ``None``: 2). A local engine is not
    retried (a warning says so)."""

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
        self._check_side(engine)
        self.engine_spec()
        call_options(self, None, {})

    def _check_side(self, engine: EngineProtocol | None) -> None:
        """Refuse local settings beside ``base_url``; warn of remote ones without it."""
        if self.base_url is None:
            ignored = [n for n in ("timeout", "max_retries") if getattr(self, n) is not None]
            if ignored:
                warnings.warn(
                    f"{type(self).__name__} ignores {', '.join(ignored)}: the engine runs in "
                    "this process, so nothing times out or is retried (they apply with "
                    "base_url)",
                    UserWarning,
                    stacklevel=3,
                )
            return
        local = ["engine"] if engine is not None else []
        local += [name for name in SERVER_SIDE if getattr(self, name) is not None]
        if local:
            raise InvalidOptionError(
                f"{', '.join(local)} cannot be given with base_url: the server at "
                f"{self.base_url} runs the engine (set them as quickllama serve flags there), "
                "or leave base_url out to run the engine here"
            )

    def remote(self) -> RemoteClient | None:
        """The client of the server at ``base_url`` (shared), ``None`` for a local engine."""
        if self.base_url is None:
            return None
        key = self.api_key.get_secret_value() if self.api_key is not None else None
        return client_for(ServerSpec(self.base_url, key, self.timeout, self.max_retries))

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
        """The engine given at construction, else the shared one (loaded on first use).

        Raises:
            ConfigError: with ``base_url``, whose engine runs in the server.
        """
        if self.base_url is not None:
            raise ConfigError(
                f"{type(self).__name__} has base_url={self.base_url!r}: its engine runs in "
                "that server, not in this process, so what needs the engine here (its "
                "tokenizer, a memory saved on disk) is not available; leave base_url out "
                "to load the model here"
            )
        if self._engine is None:
            self._engine = get_engine(self.engine_spec())
        return self._engine

    def model_label(self) -> str:
        """The model's name, without loading it.

        The source (the served name with ``base_url``), else the given engine's; with
        ``base_url`` and no ``model``, the server's URL.
        """
        if self.model is not None:
            return self.model
        if self.base_url is not None:
            return self.base_url
        if self._engine is not None:
            return self._engine.model_name
        return EMBEDDED_MODEL_NAME

    def max_input_tokens(self) -> int:
        """The engine's prompt limit, known without loading the model.

        With ``base_url``: the server's, asked once.
        """
        client = self.remote()
        if client is not None:
            return client.max_input_tokens()
        if self._engine is not None:
            return self._engine.max_input_tokens
        return self.engine_spec().resolved_config().max_input_tokens

    def token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` as the engine reads caller text (special tokens split).

        Loads the engine, or asks the server (``base_url``).
        """
        client = self.remote()
        if client is not None:
            return client.tokenize(text)
        return encode_text(self.get_engine().tokenizer, text)

    def chat_token_count(self, turns: Sequence[tuple[str, str]]) -> int:
        """Tokens of ``(role, text)`` turns in the model's chat template.

        The ``direct`` route's encoding, blank turns left out. Loads the engine, or asks
        the server (``base_url``).
        """
        turns = [(role, text) for role, text in turns if text.strip()]
        if not turns:
            return 0
        client = self.remote()
        if client is not None:
            return len(client.tokenize_chat(turns))
        return len(encode_chat(self.get_engine().tokenizer, turns))

    def identifying_params(self) -> dict[str, Any]:
        """The settings, JSON-ready (the config as a dict or a preset name)."""
        config = self.config
        return {
            "model": self.model_label(),
            "source": self.model,
            "config": asdict(config) if isinstance(config, QLLMConfig) else config,
            **{
                name: getattr(self, name)
                for name in ("base_url", "device", "dtype", *GENERATION_NAMES, "read_once")
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

    An option that is ``None`` is left out: the engine's default
    (``engine.generation_defaults``) applies, there or on a server.

    Raises:
        InvalidOptionError: the message the engine gives for the same value.
    """
    values = dict(values)
    mode = values.pop("mode", None)
    if mode is not None:
        check_choice("mode", mode, MODES)
    options = GenerationOptions.from_kwargs(**values)
    given = {name: getattr(options, name) for name, value in values.items() if value is not None}
    if "stop" in given:
        given["stop"] = list(options.stop) or None
    return {**given, "mode": mode}


def _api_key_from_env() -> SecretStr | None:
    """``$QUICKLLAMA_API_KEY`` as a secret, ``None`` when unset or blank."""
    value = os.environ.get(API_KEY_ENV_VAR, "").strip()
    return SecretStr(value) if value else None


def _option_error(error: ValidationError) -> InvalidOptionError:
    """Pydantic's refusal of a setting, worded like the other option errors."""
    first = error.errors()[0]
    name = ".".join(str(part) for part in first["loc"]) or "a setting"
    message = first["msg"][:1].lower() + first["msg"][1:]
    problem = f"is invalid ({message}), got {shown(first.get('input'))}"
    return InvalidOptionError.bad_value(name, problem)
