"""A provider request's read, reported to the framework while it runs.

The engine reports every read it does to the listeners of
:func:`qllm_core.progress.report_progress`. A request starts lazily: the read happens in
``request.start()`` (reading a document memory) and in the stream's first step (the
prefill). :class:`ReportingStream` runs each step of a stream inside that context, and
leaves it before handing a piece back, so a listener never leaks into the consumer's code
between pieces (where it could receive another request's progress).

This module imports neither LangChain nor LlamaIndex nor torch.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from types import TracebackType

from qllm_core.protocol import TextStream
from qllm_core.results import Answer

Reporting = Callable[[], AbstractContextManager[None]]
"""Makes the context a request's work runs in (a :func:`~qllm_core.progress.report_progress`
block with the request's listener)."""


class ReportingStream:
    """A :class:`~qllm_core.protocol.TextStream` whose every step runs in ``reporting()``.

    So the read (in the first step, or in :meth:`collect`) reports to the request's
    listener, and shows or hides the bar as the request's settings say.
    """

    def __init__(self, stream: TextStream, reporting: Reporting) -> None:
        self._stream = stream
        self._pieces = iter(stream)
        self._reporting = reporting

    def __iter__(self) -> ReportingStream:
        return self

    def __next__(self) -> str:
        with self._reporting():
            return next(self._pieces)

    def collect(self) -> Answer:
        """Run to the end (reporting the read, if it has not happened yet); the answer."""
        with self._reporting():
            return self._stream.collect()

    def close(self) -> None:
        """Stop generating and release the engine."""
        self._stream.close()

    def cancel(self) -> None:
        """Ask the stream to stop, from any thread, without waiting."""
        self._stream.cancel()

    @property
    def result(self) -> Answer | None:
        """The answer, once the stream ended or was closed."""
        return self._stream.result

    def __enter__(self) -> ReportingStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
