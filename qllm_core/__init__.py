"""quickllama's engine: query-aware long-context inference (Q-LLM) on transformers.

Nothing heavy is imported here: names are resolved on first access, so ``quickllama``'s
command line checks its arguments (``qllm_core.cli``) before torch is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import PRESETS, QLLMConfig
    from .engine import QLLMEngine
    from .errors import (
        ConfigError,
        EmptyInputError,
        InputTooLongError,
        InsufficientMemoryError,
        InvalidDocumentError,
        InvalidInputError,
        InvalidOptionError,
        MemoryFileError,
        MemoryMismatchError,
        ModelLoadError,
        QLLMError,
        UnsupportedModelError,
    )
    from .memory.document import DocumentMemory
    from .options import GenerationOptions
    from .results import Answer, AnswerStats, AnswerStream, RetrievedBlock

_LAZY = {
    "PRESETS": ".config",
    "QLLMConfig": ".config",
    "DocumentMemory": ".memory.document",
    "QLLMEngine": ".engine",
    "GenerationOptions": ".options",
    "Answer": ".results",
    "AnswerStats": ".results",
    "AnswerStream": ".results",
    "RetrievedBlock": ".results",
    **dict.fromkeys(
        (
            "ConfigError",
            "EmptyInputError",
            "InputTooLongError",
            "InsufficientMemoryError",
            "InvalidDocumentError",
            "InvalidInputError",
            "InvalidOptionError",
            "MemoryFileError",
            "MemoryMismatchError",
            "ModelLoadError",
            "QLLMError",
            "UnsupportedModelError",
        ),
        ".errors",
    ),
}

__all__ = [  # noqa: F822 (resolved by __getattr__)
    "PRESETS",
    "Answer",
    "AnswerStats",
    "AnswerStream",
    "ConfigError",
    "DocumentMemory",
    "EmptyInputError",
    "GenerationOptions",
    "InputTooLongError",
    "InsufficientMemoryError",
    "InvalidDocumentError",
    "InvalidInputError",
    "InvalidOptionError",
    "MemoryFileError",
    "MemoryMismatchError",
    "ModelLoadError",
    "QLLMConfig",
    "QLLMEngine",
    "QLLMError",
    "RetrievedBlock",
    "UnsupportedModelError",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'qllm_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
