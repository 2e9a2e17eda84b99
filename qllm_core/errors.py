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
    """A generation option that cannot be used (wrong type, out of range, unknown name).

    Built by :meth:`bad_value` for one option's value: then :attr:`option` names it and
    :attr:`problem` says what is wrong (the message is ``"{option} {problem}"``), so the
    command line can say the same with its flag (:meth:`named`).
    """

    def __init__(
        self, message: str, *, option: str | None = None, problem: str | None = None
    ) -> None:
        super().__init__(message)
        self.option = option
        self.problem = problem

    @classmethod
    def bad_value(cls, option: str, problem: str) -> InvalidOptionError:
        """The error for ``option``'s value: ``problem`` is e.g. ``"must be ..., got 'x'"``."""
        return cls(f"{option} {problem}", option=option, problem=problem)

    def named(self, name: str) -> str:
        """The message with the option called ``name`` (e.g. ``--top-p`` for ``top_p``)."""
        return f"{name} {self.problem}" if self.problem else str(self)


class InvalidInputError(QLLMError, ValueError):
    """A request argument other than text that cannot be used: token ids, a question span."""


class MemoryFileError(QLLMError, OSError):
    """A saved document memory that cannot be read.

    Missing, truncated or edited files, or an unknown format or version.
    """


class MemoryMismatchError(QLLMError, ValueError):
    """A saved document memory made with another model, tokenizer or engine config."""
