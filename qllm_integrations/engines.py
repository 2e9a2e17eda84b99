"""The process-wide engine registry shared by the LangChain and LlamaIndex providers.

Framework objects are cheap and made often (LangChain's standard tests build a model per
test); the model weights behind them are not. Engines are therefore created lazily, on
first use, and cached by :meth:`EngineSpec.key <qllm_core.spec.EngineSpec.key>`, so every
wrapper asking for the same engine shares one. The engine serializes its own requests, so
sharing is safe.
"""

from __future__ import annotations

import logging
import threading

from qllm_core.protocol import EngineProtocol
from qllm_core.spec import EngineKey, EngineSpec

logger = logging.getLogger(__name__)

_engines: dict[EngineKey, EngineProtocol] = {}
_key_locks: dict[EngineKey, threading.Lock] = {}
_registry_lock = threading.Lock()


def get_engine(spec: EngineSpec | None = None) -> EngineProtocol:
    """The shared engine for ``spec`` (default: the embedded model), loaded on first use.

    Thread-safe: concurrent callers with the same key wait for one load; callers with
    other keys are not held up by it.

    Raises:
        ModelLoadError: the source cannot be found or loaded.
    """
    spec = spec or EngineSpec()
    key = spec.key()
    engine = _engines.get(key)
    if engine is not None:
        return engine
    with _registry_lock:
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        engine = _engines.get(key)
        if engine is None:
            logger.info(
                "loading engine for %s (device=%s, dtype=%s)",
                spec.source or "the embedded model",
                spec.device or "auto",
                spec.dtype or "auto",
            )
            engine = _load(spec)
            with _registry_lock:
                _engines[key] = engine
    return engine


def clear_engines() -> None:
    """Forget every cached engine (their memory is freed once no wrapper holds them)."""
    with _registry_lock:
        _engines.clear()
        _key_locks.clear()


def _load(spec: EngineSpec) -> EngineProtocol:
    return spec.load()
