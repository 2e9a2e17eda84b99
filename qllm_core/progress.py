"""Progress of long reads, shown where people look and reported to whoever listens.

The engine wraps each prefill it runs (the read, and the re-read of the passages) in
:func:`prefill_progress`, which does two things:

- a tqdm bar in tokens per second (``tqdm.auto``: a widget in Jupyter, text on stderr
  elsewhere), shown when stderr is a terminal or the code runs in a notebook kernel;
  never when the engine was built with ``progress=False`` or inside
  ``report_progress(bar=False)``;
- a :class:`ProgressEvent` to every listener registered with :func:`report_progress` in
  the current context, once when the phase starts and after every prefill chunk. The
  providers register one that forwards the events to LangChain callbacks and LlamaIndex
  instrumentation, so apps can show the read advancing.

Listeners live in a context variable: they follow the work into threads started with the
caller's context (``asyncio.to_thread``, the providers' worker threads), never into
unrelated requests.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

logger = logging.getLogger(__name__)

Phase = Literal["read", "reread"]
"""``read``: the prompt (document and question) as the request reads it; ``reread``: the
passages the question attended to, read again with the model's own attention."""

_BAR_LABELS: dict[str, str] = {"read": "reading", "reread": "re-reading"}


@dataclass(frozen=True)
class ProgressEvent:
    """How far one phase of a read got."""

    phase: Phase
    """Which read: ``read`` or ``reread``."""
    done: int
    """Tokens read so far in this phase."""
    total: int
    """Tokens this phase reads."""
    seconds: float
    """Seconds since the phase started."""

    @property
    def fraction(self) -> float:
        """``done / total`` (1.0 for an empty phase)."""
        return self.done / self.total if self.total else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields plus ``fraction`` (what the providers send)."""
        return {**asdict(self), "fraction": self.fraction}


ProgressListener = Callable[[ProgressEvent], None]
"""Called with each :class:`ProgressEvent`, in the thread that reads: keep it quick."""


class ProgressLike(Protocol):
    """What the engine needs from a progress bar."""

    def update(self, n: int = 1) -> object:
        """Advance the bar by ``n`` tokens."""
        ...

    def close(self) -> None:
        """Finish the bar."""
        ...


@dataclass(frozen=True)
class _Reporting:
    listeners: tuple[ProgressListener, ...] = ()
    bar: bool = True


_NOBODY = _Reporting()
"""No listener, bars allowed: outside every :func:`report_progress` block."""
_REPORTING: ContextVar[_Reporting] = ContextVar("quickllama_progress", default=_NOBODY)


@contextlib.contextmanager
def report_progress(
    listener: ProgressListener | None = None, *, bar: bool = True
) -> Iterator[None]:
    """Within the block, send every read's progress to ``listener``; ``bar=False`` hides bars.

    Blocks nest: an inner block adds its listener to the outer ones, and a bar hidden by
    an outer block stays hidden.
    """
    current = _REPORTING.get()
    listeners = current.listeners + ((listener,) if listener is not None else ())
    token = _REPORTING.set(_Reporting(listeners, current.bar and bar))
    try:
        yield
    finally:
        _REPORTING.reset(token)


def prefill_progress(
    total_tokens: int, enabled: bool | None = None, *, phase: Phase = "read"
) -> ProgressLike:
    """A bar over ``total_tokens`` prompt tokens that also tells the listeners in context.

    Args:
        total_tokens: tokens the prefill will read.
        enabled: ``True`` always shows the bar, ``False`` never; ``None`` shows it when
            stderr is a terminal or in a notebook kernel.
        phase: which read this is (the bar's label, the events' ``phase``).

    """
    from tqdm.auto import tqdm

    reporting = _REPORTING.get()
    if enabled is None:
        enabled = _stderr_is_terminal() or _in_notebook()
    bar = tqdm(
        total=total_tokens,
        desc=_BAR_LABELS[phase],
        unit="tok",
        unit_scale=True,
        disable=not (enabled and reporting.bar),
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )
    if not reporting.listeners:
        return bar
    return _ReportedBar(bar, reporting.listeners, phase, total_tokens)


class _ReportedBar:
    """A bar that also sends a :class:`ProgressEvent` to listeners at the start and per update.

    A listener that raises is logged and not called again for this phase: showing
    progress must never stop a read.
    """

    def __init__(
        self,
        bar: ProgressLike,
        listeners: tuple[ProgressListener, ...],
        phase: Phase,
        total: int,
    ) -> None:
        self._bar = bar
        self._listeners = list(listeners)
        self._phase: Phase = phase
        self._total = total
        self._done = 0
        self._started = time.perf_counter()
        self._notify()

    def update(self, n: int = 1) -> object:
        """Advance the bar by ``n`` tokens and tell the listeners."""
        self._done += n
        self._notify()
        return self._bar.update(n)

    def close(self) -> None:
        """Finish the bar."""
        self._bar.close()

    def _notify(self) -> None:
        event = ProgressEvent(
            self._phase, self._done, self._total, time.perf_counter() - self._started
        )
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.warning("progress listener %r failed; dropped", listener, exc_info=True)
                self._listeners.remove(listener)


def _stderr_is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (as ``tqdm.autonotebook`` decides it)."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if callable(get_ipython) else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})
