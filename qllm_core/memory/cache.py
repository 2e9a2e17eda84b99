"""An engine's most recently used document memories, bounded in bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from .capacity import available_ram_bytes
from .document import DocumentMemory

DEFAULT_RAM_SHARE = 0.25
"""Default bound of the cache: this share of the RAM available when the engine starts."""
FALLBACK_BYTES = 2 * 2**30
"""Default bound where the available RAM cannot be read."""


def default_cache_bytes() -> int:
    """A quarter of the available RAM (2 GiB where it cannot be read)."""
    available = available_ram_bytes()
    return int(available * DEFAULT_RAM_SHARE) if available else FALLBACK_BYTES


class MemoryCache:
    """Least-recently-used document memories whose bytes sum to at most ``max_bytes``.

    A memory larger than the bound is not kept (0 disables the cache). Thread-safe.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, DocumentMemory] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes of the memories held."""
        with self._lock:
            return sum(m.nbytes for m in self._items.values())

    def get(self, key: Hashable) -> DocumentMemory | None:
        """The memory under ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            memory = self._items.get(key)
            if memory is not None:
                self._items.move_to_end(key)
            return memory

    def put(self, key: Hashable, memory: DocumentMemory) -> None:
        """Keep ``memory`` under ``key``, evicting the least recently used beyond the bound."""
        with self._lock:
            self._items.pop(key, None)
            if memory.nbytes > self.max_bytes:
                return
            self._items[key] = memory
            total = sum(m.nbytes for m in self._items.values())
            while total > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                total -= evicted.nbytes

    def discard(self, key: Hashable) -> None:
        """Drop the memory under ``key``, if any."""
        with self._lock:
            self._items.pop(key, None)

    def keys(self) -> list[Hashable]:
        """The keys of the memories held, least recently used first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        """Drop every memory."""
        with self._lock:
            self._items.clear()
