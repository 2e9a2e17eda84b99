"""What a provider needs from an engine, as ``Protocol`` classes mypy can check.

The LangChain and LlamaIndex providers, and the fakes their tests run on, talk to an
engine only through :class:`EngineProtocol`. ``QLLMEngine`` satisfies it (checked below,
for mypy only), and so must any fake: a change on either side fails type checking instead
of drifting apart silently.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from .config import QLLMConfig
from .results import Answer

if TYPE_CHECKING:
    from typing_extensions import Self

    from .engine import QLLMEngine


class TextStream(Protocol):
    """An answer being generated: ``AnswerStream`` as the providers use it.

    Iterable once, yielding text deltas; ``close()`` (or leaving a ``with`` block)
    releases the engine at once; ``result`` is the :class:`Answer` after the end or close;
    ``collect()`` runs to the end and returns it.
    """

    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None:
        """Stop generating and release the engine."""

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

    def stream(self, document: str, question: str, **options: Any) -> TextStream:
        """Start answering ``question`` about ``document`` (the engine builds the prompt)."""
        ...

    def stream_ids(self, input_ids: Sequence[int], **options: Any) -> TextStream:
        """Start completing a prompt given as token ids (the ``direct`` route)."""
        ...


if TYPE_CHECKING:

    def _real_engine_conforms(engine: QLLMEngine) -> EngineProtocol:
        return engine  # mypy fails here when QLLMEngine stops satisfying the protocol
