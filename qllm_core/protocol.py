"""What a provider needs from an engine, as ``Protocol`` classes mypy can check.

The LangChain and LlamaIndex providers, and the fakes their tests run on, talk to an
engine only through :class:`EngineProtocol` (and the memories it returns, through
:class:`MemoryProtocol`). ``QLLMEngine`` satisfies it (checked below,
for mypy only), and so must any fake: a change on either side fails type checking instead
of drifting apart silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from .config import QLLMConfig
from .results import Answer

if TYPE_CHECKING:
    from typing_extensions import Self

    from .engine import QLLMEngine
    from .memory.document import DocumentMemory


class TextStream(Protocol):
    """An answer being generated: ``AnswerStream`` as the providers use it.

    Iterable once, yielding text deltas; ``close()`` (or leaving a ``with`` block)
    releases the engine at once; ``result`` is the :class:`Answer` after the end or close;
    ``collect()`` runs to the end and returns it.
    """

    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None:
        """Stop generating and release the engine."""

    def cancel(self) -> None:
        """Ask to stop, from any thread, without waiting (see ``AnswerStream.cancel``)."""

    def collect(self) -> Answer:
        """Run to the end; the whole :class:`Answer`."""
        ...

    @property
    def result(self) -> Answer | None:
        """The answer, once the stream ended or was closed."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class MemoryProtocol(Protocol):
    """A document read once, as the providers use it.

    :class:`~qllm_core.memory.document.DocumentMemory` for the real engine: an opaque
    handle from :meth:`EngineProtocol.memory_for`, passed back to
    :meth:`EngineProtocol.stream`.
    """

    @property
    def document_sha256(self) -> str:
        """SHA-256 of the document text (hex), reported in response metadata."""
        ...

    @property
    def mode(self) -> str:
        """The mode it was read with: ``full`` or a Q-LLM mode."""
        ...

    @property
    def tokens(self) -> int:
        """Prompt tokens it holds (the template's start and the document)."""
        ...

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write it to the directory ``path``."""
        ...


class EngineProtocol(Protocol):
    """The engine API the providers rely on (see docs/ENGINE_API.md)."""

    @property
    def config(self) -> QLLMConfig:
        """The engine's settings (the providers read ``n_local`` and ``max_input_tokens``)."""
        ...

    @property
    def tokenizer(self) -> Any:
        """A transformers tokenizer: ``__call__``, ``decode``, ``apply_chat_template``."""
        ...

    @property
    def model_name(self) -> str:
        """The model's name, as reported in response metadata."""
        ...

    @property
    def max_input_tokens(self) -> int:
        """The longest prompt accepted, in tokens."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the model's tokenizer."""
        ...

    def stream(self, document: Any, question: str, **options: Any) -> TextStream:
        """Start answering ``question`` about ``document`` (the engine builds the prompt).

        ``document``: the text (read for this question), or a memory from
        :meth:`memory_for` (read on from; ``mode`` must then be left out). Typed ``Any``
        because each engine takes its own memory type: the real engine's
        ``str | DocumentMemory`` could not accept a wider parameter type.
        """
        ...

    def memory_for(self, document: str, *, mode: str | None = None) -> tuple[MemoryProtocol, bool]:
        """``document`` read once, question-free: ``(memory, reused)``.

        From the engine's cache when the same text was read before with the same config
        and ``mode`` (``reused`` True), else read now and kept there.
        """
        ...

    def stream_ids(self, input_ids: Sequence[int], **options: Any) -> TextStream:
        """Start completing a prompt given as token ids (the ``direct`` route)."""
        ...


if TYPE_CHECKING:

    def _real_engine_conforms(engine: QLLMEngine) -> EngineProtocol:
        return engine  # mypy fails here when QLLMEngine stops satisfying the protocol

    def _real_memory_conforms(memory: DocumentMemory) -> MemoryProtocol:
        return memory  # mypy fails here when DocumentMemory stops satisfying the protocol
