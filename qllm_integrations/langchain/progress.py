"""The read's progress as LangChain custom events, so an app can show it.

While a request reads its document, each :class:`~qllm_core.progress.ProgressEvent`
reaches the run's callback handlers as ``on_custom_event`` named :data:`PROGRESS_EVENT`,
with the event's fields as data (``phase``, ``done``, ``total``, ``seconds``,
``fraction``), under the model's run (``invoke``, ``batch``, ``generate``) or, when
LangChain streams (``stream``, ``astream``, ``astream_events``), under the enclosing
runnable's run: LangChain hands ``_stream`` no callback manager of the model's run, so a
model streamed on its own, outside any runnable, has nobody to report to. The model's
``progress=False`` turns them off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar
from uuid import UUID

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import (
    ensure_config,
    get_async_callback_manager_for_config,
    get_callback_manager_for_config,
)

from qllm_core.progress import ProgressEvent, ProgressListener

PROGRESS_EVENT = "quickllama_progress"
"""Name of the custom event that carries the read's progress."""

Manager = TypeVar("Manager", CallbackManager, AsyncCallbackManager)


def progress_listener(run_manager: CallbackManagerForLLMRun | None) -> ProgressListener | None:
    """A listener that sends each event to the run's handlers (``None``: nobody listens).

    ``run_manager`` is the model's run (``invoke``, ``generate``); without it (LangChain's
    ``stream`` calls ``_stream`` without one), the enclosing runnable's run, if any (a
    chain, a LangGraph node, ``astream_events`` of a chain).
    """
    target = _target(run_manager, CallbackManager, get_callback_manager_for_config)
    if target is None:
        return None
    manager, run_id = target

    def listener(event: ProgressEvent) -> None:
        manager.on_custom_event(PROGRESS_EVENT, event.to_dict(), run_id=run_id)

    return listener


def async_progress_listener(
    run_manager: AsyncCallbackManagerForLLMRun | None,
) -> ProgressListener | None:
    """:func:`progress_listener` for the engine's worker thread, run on this event loop.

    Call it on the loop the run belongs to. Each event waits for the handlers to finish,
    so they see the events in order, each before the read goes on.
    """
    target = _target(run_manager, AsyncCallbackManager, get_async_callback_manager_for_config)
    if target is None:
        return None
    manager, run_id = target
    loop = asyncio.get_running_loop()

    def listener(event: ProgressEvent) -> None:
        sent = manager.on_custom_event(PROGRESS_EVENT, event.to_dict(), run_id=run_id)
        if _running_loop() is loop:  # on the loop itself: waiting would block it
            loop.create_task(sent)
        else:
            asyncio.run_coroutine_threadsafe(sent, loop).result()

    return listener


def _target(
    run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
    manager_class: type[Manager],
    from_config: Callable[[RunnableConfig], Manager],
) -> tuple[Manager, UUID] | None:
    """The callback manager and run id the events go to, or ``None`` when nobody listens."""
    if run_manager is not None:
        if not run_manager.handlers:
            return None
        manager = manager_class(
            handlers=run_manager.handlers, tags=run_manager.tags, metadata=run_manager.metadata
        )
        return manager, run_manager.run_id
    manager = from_config(ensure_config())
    if manager.parent_run_id is None or not manager.handlers:
        return None
    return manager, manager.parent_run_id


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
