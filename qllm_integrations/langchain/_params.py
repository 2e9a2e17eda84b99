"""Fields and engine handling shared by ``ChatQLLM`` and ``QLLM``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.language_models.base import LangSmithParams
from pydantic import BaseModel, PrivateAttr

from qllm_core.config import QLLMConfig
from qllm_core.loading import EMBEDDED_MODEL_NAME
from qllm_integrations.engines import get_engine
from qllm_integrations.langchain._call import CALL_KWARGS, DIRECT_ROUTE, PROVIDER, EngineCall
from qllm_integrations.split import PromptSplit

_SHORT_CHARS_PER_TOKEN = 16
"""No tokenizer packs more characters than this into one token: longer texts skip counting."""


class QLLMParams(BaseModel):
    """Settings common to the chat model and the LLM; the engine is held privately."""

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
    max_tokens: int = 256
    """Most tokens to generate per answer."""
    temperature: float = 0.0
    """Sampling temperature; 0 is greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest token set with this much probability."""
    seed: int | None = None
    """Seed of the sampler, for reproducible sampling at temperature > 0."""
    stop: list[str] | None = None
    """Strings that end the answer (cut from it); a ``stop`` given per call replaces these."""
    mode: Literal["qllm", "infllm", "streaming", "full"] | None = None
    """Attention mode for every request; ``None`` keeps the engine config's mode."""
    streaming: bool = False
    """Whether ``invoke`` streams internally (so callbacks see every token)."""

    _engine: Any = PrivateAttr(default=None)
    _engine_given: bool = PrivateAttr(default=False)

    def _resolved_config(self) -> QLLMConfig | None:
        if isinstance(self.config, str):
            return QLLMConfig.preset(self.config)
        return self.config

    def _get_engine(self, source: str | None = None) -> Any:
        """The engine: the one given at construction, or the registry's, loaded on demand.

        ``source`` (a per-call ``model=`` override) picks another engine from the registry.
        """
        if source is not None and source != self.model:
            return get_engine(
                source, config=self._resolved_config(), device=self.device, dtype=self.dtype
            )
        if self._engine is None:
            self._engine = get_engine(
                self.model, config=self._resolved_config(), device=self.device, dtype=self.dtype
            )
        return self._engine

    def _model_label(self, source: str | None = None) -> str:
        """The model's name, without loading it: the source as given, else the engine's."""
        source = source or self.model
        if source is not None:
            return str(source)
        if self._engine_given:
            return str(self._engine.model_name)
        return EMBEDDED_MODEL_NAME

    def _max_input_tokens(self) -> int:
        """The engine's real prompt limit, known without loading the model."""
        if self._engine is not None:
            return int(self._engine.max_input_tokens)
        config = self._resolved_config() or QLLMConfig.default_for(self.model)
        return config.max_input_tokens

    def _identifying_params_dict(self) -> dict[str, Any]:
        config = self.config
        return {
            "model": self._model_label(),
            "source": self.model,
            "config": config if isinstance(config, str | None) else _config_dict(config),
            "device": self.device,
            "dtype": self.dtype,
            "mode": self.mode,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop,
        }

    def _ls_params(
        self, model_type: Literal["chat", "llm"], stop: Sequence[str] | None, kwargs: dict[str, Any]
    ) -> LangSmithParams:
        """LangSmith's tracing parameters of a call."""
        params = LangSmithParams(
            ls_provider=PROVIDER,
            ls_model_name=kwargs.get("model") or self._model_label(),
            ls_model_type=model_type,
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params

    def _split_call_kwargs(
        self, stop: Sequence[str] | None, kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Engine options, and the rest (question, document, model, response_format).

        Raises:
            TypeError: on a keyword argument the model does not know.
        """
        unknown = set(kwargs) - CALL_KWARGS
        if unknown:
            raise TypeError(
                f"{type(self).__name__} got unexpected keyword arguments "
                f"{sorted(unknown)}; it accepts {sorted(CALL_KWARGS | {'stop'})}"
            )
        stops = list(stop) if stop is not None else (self.stop or [])
        options = {
            "max_new_tokens": kwargs.get(
                "max_tokens", kwargs.get("max_new_tokens", self.max_tokens)
            ),
            "temperature": kwargs.get("temperature", self.temperature),
            "top_p": kwargs.get("top_p", self.top_p),
            "seed": kwargs.get("seed", self.seed),
            "stop": [s for s in stops if s] or None,
            "mode": kwargs.get("mode", self.mode),
        }
        rest = {k: kwargs.get(k) for k in ("question", "document", "model", "response_format")}
        return options, rest

    def _is_short(self, engine: Any, text: str) -> bool:
        """Whether ``text`` fits the local window, where Q-LLM equals full attention."""
        window = int(engine.config.n_local)
        return len(text) <= window * _SHORT_CHARS_PER_TOKEN and engine.count_tokens(text) <= window

    def _make_call(
        self,
        engine: Any,
        source: str | None,
        split: PromptSplit | None,
        input_ids: list[int] | None,
        options: dict[str, Any],
    ) -> EngineCall:
        route = split.route if split is not None else DIRECT_ROUTE
        return EngineCall(
            engine=engine,
            model_name=self._model_label(source),
            route=route,
            split=split,
            input_ids=input_ids,
            options=options,
        )


def _config_dict(config: QLLMConfig) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(config)
