"""Admission: requests in flight hold the bytes of keys and values they will keep.

The capacity check (:func:`~qllm_core.memory.capacity.check_fits`) tells whether one
request fits the memory free when it is built. Requests that run at once (threads,
batches, a server) would each pass it alone and together not fit. So a request holds its
need (:class:`~qllm_core.memory.capacity.KVNeed`) from the start of its read to the end
of its answer, and one that would not fit beside those in flight waits for one of them
to end. The count is conservative: what a request in flight has already allocated is
missing from the free memory measured and counted again in its hold, so a request may
wait when it would have fit, but never starts when it would not. A request alone is
never held back (it passed the capacity check).
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator

from .capacity import KVNeed


class Admission:
    """The bytes held per tier by the requests in flight of one engine."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._held: Counter[str] = Counter()
        self._in_flight = 0
        self.waits = 0
        """Requests that had to wait for room."""

    @contextlib.contextmanager
    def hold(self, need: KVNeed, free: Callable[[], int | None]) -> Iterator[None]:
        """Hold ``need`` while the block runs, once it fits beside the requests in flight.

        ``free``: the bytes ``need``'s tier has free now, asked again after each end.
        """
        with self._changed:
            waited = False
            while self._in_flight and need.nbytes and not self._fits(need, free()):
                waited = True
                self._changed.wait(timeout=1.0)
            self.waits += waited
            self._held[need.tier] += need.nbytes
            self._in_flight += 1
        try:
            yield
        finally:
            with self._changed:
                self._held[need.tier] -= need.nbytes
                self._in_flight -= 1
                self._changed.notify_all()

    def _fits(self, need: KVNeed, free: int | None) -> bool:
        return free is None or need.nbytes <= free - self._held[need.tier]
