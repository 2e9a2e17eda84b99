"""The process-wide engine registry shared by the LangChain and LlamaIndex providers.

Framework objects are cheap and made often (LangChain's standard tests build a model per
test); the model weights behind them are not. Engines are therefore created lazily, on
first use, and cached by ``(source, config, device, dtype)``, so every wrapper asking for
the same key shares one engine. The engine serializes its own requests, so sharing is safe.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qllm_core.config import QLLMConfig
    from qllm_core.engine import QLLMEngine

logger = logging.getLogger(__name__)

EngineKey = tuple[str | None, Any, str | None, str | None]
"""``(source, config, device, dtype)``; ``config`` is a frozen, hashable ``QLLMConfig``."""

_engines: dict[EngineKey, QLLMEngine] = {}
_key_locks: dict[EngineKey, threading.Lock] = {}
_registry_lock = threading.Lock()


def get_engine(
    source: str | None = None,
    *,
    config: QLLMConfig | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> QLLMEngine:
    """The shared engine for ``source``, loading it on first use.

    Args:
        source: ``None`` for the embedded SmolLM2-135M-Instruct; a local model directory,
            a ``.gguf`` file or a hub id otherwise.
        config: engine settings; ``None`` picks the engine's default for ``source``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; ``None``: CUDA when available.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``; ``None``: the engine's default.

    Thread-safe: concurrent callers with the same key wait for one load; callers with
    other keys are not held up by it.

    Raises:
        ModelLoadError: the source cannot be found or loaded.
        ConfigError: ``dtype`` names no torch dtype.
    """
    key = _key(source, config, device, dtype)
    engine = _engines.get(key)
    if engine is not None:
        return engine
    with _registry_lock:
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _load(key)
            with _registry_lock:
                _engines[key] = engine
    return engine


def cached_engines() -> dict[EngineKey, QLLMEngine]:
    """A snapshot of the engines loaded so far, by key."""
    with _registry_lock:
        return dict(_engines)


def clear_engines() -> None:
    """Forget every cached engine (their memory is freed once no wrapper holds them)."""
    with _registry_lock:
        _engines.clear()
        _key_locks.clear()


def _key(
    source: str | None, config: QLLMConfig | None, device: str | None, dtype: str | None
) -> EngineKey:
    """Normalize the key so that equivalent spellings share one engine."""
    if source is not None:
        source = os.fspath(source)
        expanded = os.path.expanduser(source)
        if os.path.exists(expanded):
            source = os.path.realpath(expanded)
    if dtype is not None:
        dtype = str(dtype).removeprefix("torch.")
    return (source, config, None if device is None else str(device), dtype)


def _load(key: EngineKey) -> QLLMEngine:
    from qllm_core.engine import QLLMEngine

    source, config, device, dtype = key
    logger.info(
        "loading engine for %s (device=%s, dtype=%s)",
        source or "the embedded model",
        device or "auto",
        dtype or "auto",
    )
    return QLLMEngine.from_pretrained(
        source, config=config, device=device, dtype=_torch_dtype(dtype)
    )


def _torch_dtype(name: str | None) -> Any:
    """The torch dtype called ``name`` (``None`` stays ``None``)."""
    if name is None:
        return None
    import torch

    from qllm_core.errors import ConfigError

    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ConfigError(
            f"dtype {name!r} is not a torch dtype; use e.g. 'float32' or "
            "'bfloat16', or None for the engine's default"
        )
    return value
