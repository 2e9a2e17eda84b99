"""Which engine to build: model source, settings, device and dtype, resolved in one place.

The command line, the LangChain and LlamaIndex providers and the benchmarks all describe
an engine the same way, as an :class:`EngineSpec`. Its :meth:`~EngineSpec.key` is what the
providers' process-wide registry caches engines by, so equivalent spellings (a relative
path and its absolute form, ``torch.float32`` and ``"float32"``) share one engine.
Importing this module does not import torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import PRESETS, QLLMConfig
from .errors import ConfigError

if TYPE_CHECKING:
    import torch

    from .engine import QLLMEngine

DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16", "float64")
"""Weight dtypes an engine can be loaded in."""

EngineKey = tuple[str | None, QLLMConfig, str | None, str | None]
"""``(source, config, device, dtype)``, normalized; the registry's cache key."""


@dataclass(frozen=True)
class EngineSpec:
    """A model source plus engine settings; all ``None`` means the embedded model.

    Validated on construction: an unknown preset or dtype, or both ``preset`` and
    ``config``, raise :class:`~qllm_core.errors.ConfigError`.
    """

    source: str | None = None
    """Local model directory, ``.gguf`` file or hub id; ``None``: embedded SmolLM2-135M."""
    preset: str | None = None
    """A :data:`~qllm_core.config.PRESETS` name; ``None``: the default for ``source``."""
    config: QLLMConfig | None = None
    """Full engine settings (instead of ``preset``)."""
    overrides: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Config fields set on top of ``preset``/``config`` (validated by ``QLLMConfig``)."""
    device: str | None = None
    """``cpu``, ``cuda``, ``cuda:1``, ...; ``None``: CUDA when available."""
    dtype: str | None = None
    """One of :data:`DTYPES` (``torch.float32`` is accepted too); ``None``: float32 on
    CPU, bfloat16 on GPU."""

    def __post_init__(self) -> None:
        if self.source is not None:
            object.__setattr__(self, "source", os.fspath(self.source))
        if self.device is not None:
            object.__setattr__(self, "device", str(self.device))
        if self.dtype is not None:
            name = str(self.dtype).removeprefix("torch.")
            if name not in DTYPES:
                raise ConfigError(f"dtype {self.dtype!r} is not supported; use one of {DTYPES}")
            object.__setattr__(self, "dtype", name)
        if self.preset is not None and self.config is not None:
            raise ConfigError("give preset= or config=, not both (config= is a full config)")
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; use one of {sorted(PRESETS)}")
        object.__setattr__(self, "overrides", dict(self.overrides))
        self.resolved_config()  # bad overrides fail here, not at load time

    def resolved_config(self) -> QLLMConfig:
        """The config the engine runs with: ``config``, else ``preset``, else the default."""
        if self.config is not None:
            base = self.config
        elif self.preset is not None:
            base = QLLMConfig.preset(self.preset)
        else:
            base = QLLMConfig.default_for(self.source)
        return base.replace(**self.overrides) if self.overrides else base

    def key(self) -> EngineKey:
        """The registry key: source as a real path when it exists, the resolved config."""
        source = self.source
        if source is not None:
            expanded = os.path.expanduser(source)
            if os.path.exists(expanded):
                source = os.path.realpath(expanded)
        return (source, self.resolved_config(), self.device, self.dtype)

    def torch_dtype(self) -> torch.dtype | None:
        """``dtype`` as a ``torch.dtype`` (imports torch)."""
        if self.dtype is None:
            return None
        import torch

        value: torch.dtype = getattr(torch, self.dtype)
        return value

    def load(self, *, progress: bool | None = None) -> QLLMEngine:
        """Load the model and build a new ``QLLMEngine`` (not cached: see the registry)."""
        from .engine import QLLMEngine

        return QLLMEngine.from_pretrained(
            self.source,
            config=self.resolved_config(),
            device=self.device,
            dtype=self.torch_dtype(),
            progress=progress,
        )
