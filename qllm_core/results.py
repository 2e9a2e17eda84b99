"""What the engine returns: the answer text, its stats and the evidence blocks."""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

FinishReason = Literal["stop", "length", "eos", "cancelled"]
"""Why the answer ended: a stop string, ``max_new_tokens``, the model's end-of-sequence
token, or :meth:`AnswerStream.close` before the end."""


@dataclass(frozen=True)
class RetrievedBlock:
    """A memory block that retrieval chose while the answer was produced.

    ``token_start``/``token_end`` index the prompt's token ids (end exclusive).
    ``char_start``/``char_end`` index the document string when the block lies in it
    (``None`` for blocks of the prompt template). ``count`` is how often the block was
    chosen, summed over layers and execution blocks.
    """

    token_start: int
    token_end: int
    count: int
    char_start: int | None = None
    char_end: int | None = None
    score: float = 0.0
    """Relevance to the question: the block's share of the question's attention over all
    memory blocks, averaged over layers (0 when the request had no question)."""


@dataclass(frozen=True)
class AnswerStats:
    """Counters and timings of one request."""

    mode: str
    tokens_read: int
    tokens_generated: int
    prefill_seconds: float
    decode_seconds: float
    question_found: bool
    retrieved_blocks: tuple[RetrievedBlock, ...] = ()
    """Blocks chosen while answering, most chosen first (with a re-read: its passages)."""
    reread_tokens: int = 0
    """Document tokens of the second, full-attention read (0: a single pass)."""
    memory_tokens: int = 0
    """Prompt tokens taken from a document memory, not read again (``tokens_read`` counts
    only the tokens read for this request)."""
    reread_seconds: float = 0.0
    """Seconds of the re-read (ranking the passages and reading them), part of
    ``prefill_seconds``."""

    @property
    def prefill_tokens_per_second(self) -> float:
        """Prompt tokens read per second of prefill (the re-read's time included)."""
        return _rate(self.tokens_read, self.prefill_seconds)

    def phases(self) -> dict[str, dict[str, float]]:
        """Tokens, seconds and tokens per second of the read, the re-read and the decoding.

        ``read``: the tokens read for this request, in ``prefill_seconds`` less the
        re-read; ``reread``: the re-read's document tokens and seconds; ``decode``: the
        tokens generated. What ``quickllama --stats`` prints.
        """
        counts = {
            "read": (self.tokens_read, self.prefill_seconds - self.reread_seconds),
            "reread": (self.reread_tokens, self.reread_seconds),
            "decode": (self.tokens_generated, self.decode_seconds),
        }
        return {
            phase: {
                "tokens": tokens,
                "seconds": seconds,
                "tokens_per_second": _rate(tokens, seconds),
            }
            for phase, (tokens, seconds) in counts.items()
        }


def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


@dataclass(frozen=True)
class Answer:
    """The engine's answer to one question."""

    text: str
    finish_reason: FinishReason
    stats: AnswerStats


class AnswerStream:
    """The answer to one request as text deltas: iterate once, then read :attr:`result`.

    Built complete around ``pieces``, a generator that yields text deltas and returns the
    final :class:`Answer` (empty deltas are skipped). The stream holds no lock while it is
    not being iterated, so it may be paused, abandoned (``break``, ``del``, an exception in
    the consumer) or interleaved with other requests at no cost.

    :meth:`close` (also on leaving a ``with`` block) stops generating: :attr:`result` is
    then the partial answer, the text delivered so far with ``finish_reason`` ``"cancelled"``,
    built by ``cancelled(text_so_far)``; ``None`` if no ``cancelled`` was given. Closing
    from another thread waits for the step in progress: a decode step, or a prefill
    chunk when ``stop`` is given (the engine's pipeline reads it between chunks; without
    it, the whole read). :meth:`cancel` asks for the same without waiting. After an
    exception from the engine, :attr:`result` stays ``None``.
    """

    def __init__(
        self,
        pieces: Generator[str, None, Answer],
        *,
        cancelled: Callable[[str], Answer] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self._pieces = pieces
        self._cancelled = cancelled
        self._stop = stop
        self._delivered: list[str] = []
        self._result: Answer | None = None
        self._done = False
        self._close_requested = False
        self._lock = threading.Lock()

    @property
    def result(self) -> Answer | None:
        """The answer once the stream ended or was closed (``None`` before)."""
        return self._result

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        with self._lock:
            while not self._done:
                if self._close_requested:
                    self._cancel()
                    break
                try:
                    piece = next(self._pieces)
                except StopIteration as end:
                    self._done = True
                    self._result = end.value
                    break
                except BaseException:
                    self._done = True
                    raise
                if piece:
                    self._delivered.append(piece)
                    return piece
            raise StopIteration

    def collect(self) -> Answer:
        """Iterate to the end (or what is left of it) and return :attr:`result`."""
        for _ in self:
            pass
        if self._result is None:
            raise RuntimeError("the stream was closed and has no partial answer")
        return self._result

    def cancel(self) -> None:
        """Ask the stream to stop, from any thread, without waiting for it.

        The read stops after its prefill chunk in progress, the decoding after its step
        in progress; the thread iterating the stream then sees it end, with the partial
        answer as :attr:`result` (as after :meth:`close`). Idempotent.
        """
        self._close_requested = True
        if self._stop is not None:
            self._stop.set()

    def close(self) -> None:
        """Stop generating; :attr:`result` becomes the partial answer. Idempotent."""
        self.cancel()
        with self._lock:
            if not self._done:
                self._cancel()

    def _cancel(self) -> None:
        self._done = True
        self._pieces.close()
        if self._cancelled is not None:
            self._result = self._cancelled("".join(self._delivered))

    def __enter__(self) -> AnswerStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
