"""Run the blocking engine off the event loop: one call in a thread, or a stream via a queue."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

_ITEM, _ERROR, _DONE = "item", "error", "done"

_CANCELS: contextvars.ContextVar[list[Callable[[], None]] | None] = contextvars.ContextVar(
    "quickllama_cancels", default=None
)
"""The cancel callbacks of the :func:`iterate_in_thread` whose thread runs this code."""


def cancel_with_consumer(cancel: Callable[[], None]) -> None:
    """Call ``cancel`` when the consumer of the :func:`iterate_in_thread` running this stops.

    For the iterator's own code (``answer_events`` registers ``AnswerStream.cancel``): when
    the async consumer stops early, ``cancel`` runs on the event loop (it must not block)
    to cut short the item being produced. Outside such a thread: nothing.
    """
    cancels = _CANCELS.get()
    if cancels is not None:
        cancels.append(cancel)


async def run_in_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a worker thread, with the caller's context variables."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def iterate_in_thread(make_iterator: Callable[[], Iterator[T]]) -> AsyncGenerator[T, None]:
    """Yield the items of a blocking iterator that runs in a worker thread.

    ``make_iterator`` is called in the thread too, so a slow start (the prefill of a long
    document) does not block the event loop either. When the consumer stops early, the
    thread stops at the next item and closes the iterator, which releases the engine; the
    callbacks the iterator registered with :func:`cancel_with_consumer` run then, to cut
    short the wait for that next item (an answer's read stops between prefill chunks).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def post(kind: str, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop closed while the thread was still running
            logger.debug("event loop closed; dropped a %s from the engine thread", kind)

    def produce() -> None:
        _CANCELS.set(cancels)
        iterator = None
        try:
            iterator = make_iterator()
            for item in iterator:
                if stop.is_set():
                    break
                post(_ITEM, item)
        except BaseException as error:  # handed to the consumer, which re-raises it
            post(_ERROR, error)
        else:
            post(_DONE, None)
        finally:
            close = getattr(iterator, "close", None)
            if callable(close):
                close()

    cancels: list[Callable[[], None]] = []
    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run, args=(produce,), daemon=True, name="quickllama-stream"
    )
    thread.start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == _ITEM:
                yield value
            elif kind == _ERROR:
                raise value
            else:
                return
    finally:
        stop.set()
        if thread.is_alive():
            for cancel in list(cancels):
                cancel()
