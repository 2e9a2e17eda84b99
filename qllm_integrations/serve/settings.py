"""What one server runs with: the engine to load, where it listens, its limits and keys.

:class:`ServeSettings` is built by ``quickllama serve`` from its flags (:mod:`.cli`) and by
the Ray Serve deployment for each replica; :func:`~qllm_integrations.serve.app.create_app`
takes nothing else. Validated on construction: a bad value raises
:class:`~qllm_core.errors.ConfigError` naming the flag. Importing this module does not
import torch, FastAPI or uvicorn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from qllm_core.errors import ConfigError
from qllm_core.models.loading import cache_root
from qllm_core.spec import EngineSpec

API_KEY_ENV_VAR = "QUICKLLAMA_API_KEY"
"""Environment variable of the API key(s): one, or several separated by commas."""


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """One server's settings; each field is the ``quickllama serve`` flag of the same name."""

    model: str | None = None
    """Model source (directory, ``.gguf`` file or hub id); ``None``: embedded SmolLM2-135M."""
    preset: str | None = None
    """A config preset name; ``None``: the default for the model."""
    device: str | None = None
    """``cpu``, ``cuda``, ``cuda:1``, ...; ``None``: CUDA when available."""
    dtype: str | None = None
    """Weight dtype; ``None``: float32 on CPU, bfloat16 on GPU."""
    host: str = "127.0.0.1"
    """Address to bind (all interfaces: ``0.0.0.0``)."""
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    """Keys a client must send as ``Authorization: Bearer <key>``; empty: no key needed."""
    memory_dir: str | None = None
    """Where document memories are kept; ``None``: :func:`default_memory_dir`."""
    max_queue: int = 64
    """Requests accepted at once (running or waiting for the engine); beyond: 429."""
    request_timeout: float = 600.0
    """Seconds a request may take from its admission to its last byte; beyond: 504."""
    max_body_bytes: int = 64 * 2**20
    """Largest request body; beyond: 413."""
    max_document_tokens: int | None = None
    """Longest document, in tokens; ``None``: the engine's ``max_input_tokens``."""
    shutdown_timeout: float = 30.0
    """Seconds in-flight requests get to finish after SIGTERM before they are cancelled."""
    served_model_name: str | None = None
    """The ``model`` clients name; ``None``: the loaded model's name."""
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0..65535, got {self.port}")
        _at_least("--max-queue", self.max_queue, 1)
        _at_least("--max-body-bytes", self.max_body_bytes, 1)
        if self.max_document_tokens is not None:
            _at_least("--max-document-tokens", self.max_document_tokens, 1)
        if not self.request_timeout > 0:
            raise ConfigError(f"--request-timeout must be > 0 seconds, got {self.request_timeout}")
        if not self.shutdown_timeout >= 0:
            raise ConfigError(
                f"--shutdown-timeout must be >= 0 seconds, got {self.shutdown_timeout}"
            )
        if any(not key.strip() for key in self.api_keys):
            raise ConfigError("--api-key must not be empty; leave it out to run without keys")
        self.engine_spec()  # an unknown preset or dtype fails now, not at load time

    def engine_spec(self) -> EngineSpec:
        """The engine this server loads."""
        return EngineSpec(
            source=self.model, preset=self.preset, device=self.device, dtype=self.dtype
        )

    def memory_path(self) -> Path:
        """The memory directory, ``--memory-dir`` or the default."""
        if self.memory_dir is not None:
            return Path(self.memory_dir).expanduser()
        return default_memory_dir()


def default_memory_dir() -> Path:
    """``$QUICKLLAMA_CACHE_DIR/memories`` (``~/.cache/quickllama/memories`` when unset)."""
    return cache_root() / "memories"


def keys_from_env(environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """The API keys of :data:`API_KEY_ENV_VAR` (comma-separated; blanks ignored)."""
    value = (os.environ if environ is None else environ).get(API_KEY_ENV_VAR, "")
    return tuple(key.strip() for key in value.split(",") if key.strip())


def _at_least(flag: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{flag} must be a whole number >= {low}, got {value!r}")
