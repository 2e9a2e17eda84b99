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


async def run_in_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a worker thread, with the caller's context variables."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def iterate_in_thread(
    make_iterator: Callable[[], Iterator[T]], on_stop: Callable[[], None] | None = None
) -> AsyncGenerator[T, None]:
    """Yield the items of a blocking iterator that runs in a worker thread.

    ``make_iterator`` is called in the thread too, so a slow start (the prefill of a long
    document) does not block the event loop either. When the consumer stops early, the
    thread stops at the next item and closes the iterator, which releases the engine;
    ``on_stop`` is called then (on the event loop: it must not block), to cut short the
    wait for that next item (``AnswerStream.cancel``).
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
        if on_stop is not None and thread.is_alive():
            on_stop()
