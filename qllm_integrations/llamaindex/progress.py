"""The read's progress as LlamaIndex instrumentation events, so an app can show it.

While ``QLLM`` or ``WholeDocumentQueryEngine`` reads a document, each
:class:`~qllm_core.progress.ProgressEvent` is dispatched as a :class:`ReadProgressEvent`
(inside the call's span). Receive them with an event handler on the root dispatcher::

    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler

    class ShowProgress(BaseEventHandler):
        def handle(self, event, **kwargs):
            if isinstance(event, ReadProgressEvent):
                print(f"{event.phase}: {event.fraction:.0%}")

    get_dispatcher().add_event_handler(ShowProgress())

The LLM's ``progress=False`` turns them off.
"""

from __future__ import annotations

from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.base import BaseEvent

from qllm_core.progress import ProgressEvent

dispatcher = get_dispatcher(__name__)


class ReadProgressEvent(BaseEvent):
    """How far the read of a document got (one phase: ``read`` or ``reread``)."""

    phase: str
    """``read``: the prompt with the document; ``reread``: the passages read again."""
    done: int
    """Tokens read so far in this phase."""
    total: int
    """Tokens this phase reads."""
    seconds: float
    """Seconds since the phase started."""
    fraction: float
    """``done / total``."""

    @classmethod
    def class_name(cls) -> str:
        """Name of the event in LlamaIndex's instrumentation."""
        return "QLLMReadProgressEvent"


def report_read(event: ProgressEvent) -> None:
    """Dispatch ``event`` as a :class:`ReadProgressEvent` (a progress listener)."""
    dispatcher.event(ReadProgressEvent(**event.to_dict()))
