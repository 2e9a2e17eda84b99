"""quickllama's engine: query-aware long-context inference (Q-LLM) on transformers."""

from .config import PRESETS, QLLMConfig
from .document_memory import DocumentMemory
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
from .options import GenerationOptions
from .results import Answer, AnswerStats, AnswerStream, RetrievedBlock

__all__ = [
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
