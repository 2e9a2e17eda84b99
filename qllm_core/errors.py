"""Named exceptions for problems a caller can fix.

Every message says what went wrong and how to fix it. ``assert`` is kept for
internal invariants only.
"""

from __future__ import annotations


class QLLMError(Exception):
    """Base class of every error quickllama raises on purpose."""


class ConfigError(QLLMError, ValueError):
    """A configuration value that cannot work; the message names the field."""


class EmptyInputError(QLLMError, ValueError):
    """An empty (or whitespace-only) document or question."""


class InvalidDocumentError(QLLMError, ValueError):
    """A document that is not text: binary data or bytes that are not UTF-8."""


class InputTooLongError(QLLMError, ValueError):
    """An input over the configured ``max_input_tokens``."""


class InsufficientMemoryError(QLLMError, MemoryError):
    """An input whose keys and values would not fit where they are kept (checked up front)."""


class UnsupportedModelError(QLLMError, TypeError):
    """A model the engine cannot drive (not a RoPE decoder, no rotary module, ...)."""


class ModelLoadError(QLLMError, OSError):
    """A model source that cannot be found or loaded."""


class InvalidOptionError(QLLMError, ValueError):
    """A generation option that cannot be used (wrong type, out of range, unknown name)."""


class InvalidInputError(QLLMError, ValueError):
    """A request argument other than text that cannot be used: token ids, a question span."""


class MemoryFileError(QLLMError, OSError):
    """A saved document memory that cannot be read.

    Missing, truncated or edited files, or an unknown format or version.
    """


class MemoryMismatchError(QLLMError, ValueError):
    """A saved document memory made with another model, tokenizer or engine config."""
