"""Tiered storage of one layer's memory blocks: host RAM plus a bounded device cache.

Every block's keys and values live on the host (pinned when the device is a GPU,
optionally in a lower precision), in RAM or, with a disk tier, in memory-mapped files
the OS pages out and back in. Retrieval asks for ``topk`` blocks at a time;
those are copied into a fixed pool of ``max_cached_blocks`` device slots, evicting
the least recently used. The device-resident working set therefore stays bounded
however long the input grows. On CPU the "device" tier is RAM too; the same code
path runs, so it is tested everywhere.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..errors import InsufficientMemoryError

PAGE_BYTES = 64 * 2**20
"""Size of one host page of blocks (unpinned host memory).

Larger than glibc's largest mmap threshold (32 MiB), so every page is its own mapping:
pages never interleave with short-lived tensors on the heap (which kept freed heap
holes resident: measured +220 MiB at 24K tokens with small pages), and a page's
untouched tail takes no resident memory.
"""

PINNED_PAGE_BLOCKS = 32
"""Blocks per pinned page (GPU hosts): pinned memory is committed when allocated."""


class BlockShape(NamedTuple):
    """One block's keys (or values): ``num_kv_heads`` x ``block_size`` x ``head_dim``."""

    num_kv_heads: int
    block_size: int
    head_dim: int


@dataclass(frozen=True)
class Tiers:
    """Where blocks live.

    Up to ``max_cached_blocks`` on ``device`` in ``dtype`` (the device cache); all of them
    on the host in ``offload_dtype`` (default ``dtype``), in RAM or in files under
    ``offload_dir`` (the disk tier).
    """

    device: torch.device
    dtype: torch.dtype
    max_cached_blocks: int
    offload_dtype: torch.dtype | None = None
    offload_dir: str | None = None


class BlockStore:
    """Memory blocks of one layer: host copies, device LRU cache and representative keys.

    Args:
        num_kv_heads, head_dim, block_size: a block is (num_kv_heads, block_size, head_dim).
        max_cached_blocks: device slots (LRU).
        device, dtype: where and in which dtype blocks are used.
        offload_dtype: dtype of the host copies (``dtype`` when ``None``).
        offload_dir: when set, host pages are memory-mapped files in this directory (the
            disk tier), unlinked as soon as they are mapped.
    """

    def __init__(self, shape: BlockShape, tiers: Tiers) -> None:
        num_kv_heads, block_size, head_dim = shape
        device, dtype, max_cached_blocks = tiers.device, tiers.dtype, tiers.max_cached_blocks
        self.block_size = block_size
        self._device = device
        self._offload_dtype = tiers.offload_dtype or dtype
        self._offload_dir = tiers.offload_dir
        self._pin = device.type == "cuda" and tiers.offload_dir is None
        slots = (max_cached_blocks, num_kv_heads, block_size, head_dim)
        self._slot_keys = torch.empty(slots, device=device, dtype=dtype)
        self._slot_values = torch.empty(slots, device=device, dtype=dtype)
        self._slots: OrderedDict[int, int] = OrderedDict()  # block id -> slot, LRU first
        # Host copies live in pages of many blocks: few large allocations rather than one
        # small one per block, which fragments the host heap on long inputs.
        block_bytes = num_kv_heads * block_size * head_dim * self._offload_dtype.itemsize
        self._page_blocks = PINNED_PAGE_BLOCKS if self._pin else max(1, PAGE_BYTES // block_bytes)
        self._page_shape = (self._page_blocks, num_kv_heads, block_size, head_dim)
        self._host_keys: list[torch.Tensor] = []
        self._host_values: list[torch.Tensor] = []
        self._count = 0
        self._base: BlockStore | None = None  # a frozen store holding blocks [0, _base_count)
        self._base_count = 0
        self._reprs = torch.empty(16, num_kv_heads, head_dim, device=device, dtype=dtype)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return self._count

    @property
    def representatives(self) -> torch.Tensor:
        """Representative keys of all blocks: (num_blocks, num_kv_heads, head_dim)."""
        return self._reprs[: len(self)]

    def append(
        self, keys: torch.Tensor, values: torch.Tensor, representatives: torch.Tensor
    ) -> range:
        """Store consecutive blocks and return their ids.

        keys, values: (num_kv_heads, n * block_size, head_dim), ``n >= 1`` blocks side by side;
        representatives: (n, num_kv_heads, head_dim).
        """
        blocks = representatives.shape[0]
        assert keys.shape[1] == blocks * self.block_size, "keys must hold whole blocks"
        keys = keys.unflatten(1, (blocks, self.block_size)).transpose(0, 1)
        values = values.unflatten(1, (blocks, self.block_size)).transpose(0, 1)
        first = self._count
        done = 0
        while done < blocks:  # one copy per host page the blocks land on
            page, row = divmod(first - self._base_count + done, self._page_blocks)
            if page == len(self._host_keys):
                self._host_keys.append(self._new_page())
                self._host_values.append(self._new_page())
            take = min(blocks - done, self._page_blocks - row)
            self._host_keys[page][row : row + take].copy_(keys[done : done + take])
            self._host_values[page][row : row + take].copy_(values[done : done + take])
            done += take
        self._count += blocks
        while self._count > self._reprs.shape[0]:
            self._reprs = torch.cat([self._reprs, torch.empty_like(self._reprs)])
        self._reprs[first : self._count] = representatives
        return range(first, self._count)

    def host_key_pages(self) -> Iterator[torch.Tensor]:
        """Keys of all blocks in id order, one host page at a time: each (n, H, block_size, D)."""
        if self._base is not None:
            yield from self._base.host_key_pages()
        own = self._count - self._base_count
        for page, keys in enumerate(self._host_keys):
            yield keys[: min(self._page_blocks, own - page * self._page_blocks)]

    def host_blocks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of all blocks in id order, copied: each (n, H, block_size, D)."""
        ids = range(len(self))
        keys = [self._host(b)[0] for b in ids]
        values = [self._host(b)[1] for b in ids]
        if not keys:
            return self._slot_keys[:0].cpu(), self._slot_values[:0].cpu()
        return torch.stack(keys), torch.stack(values)

    def fork(self) -> BlockStore:
        """A store that reads this one's blocks and appends its own (copy on write).

        This store must not append afterwards (its blocks are shared, never copied); the
        fork has its own device slots, representatives and host pages for new blocks.
        """
        fork = copy.copy(self)
        fork._base, fork._base_count = self, self._count
        fork._host_keys, fork._host_values = [], []
        fork._slot_keys = torch.empty_like(self._slot_keys)
        fork._slot_values = torch.empty_like(self._slot_values)
        fork._slots = OrderedDict()
        fork._reprs = self._reprs.clone()
        fork.hits = fork.misses = 0
        return fork

    @classmethod
    def frozen(
        cls,
        keys: torch.Tensor,
        values: torch.Tensor,
        representatives: torch.Tensor,
        shape: BlockShape,
        tiers: Tiers,
    ) -> BlockStore:
        """A store holding ``keys``/``values`` (n, H, block_size, D) as its one host page.

        The tensors are adopted, not copied (a memory-mapped file stays mapped); the store
        is read through :meth:`fork` only. ``shape``, ``tiers``: as for the constructor.
        """
        store = cls(shape, tiers)
        store._host_keys, store._host_values = [keys], [values]
        store._page_blocks = max(1, keys.shape[0])
        store._count = keys.shape[0]
        store._reprs = representatives.to(store._reprs.device, store._reprs.dtype)
        return store

    def _new_page(self) -> torch.Tensor:
        if self._offload_dir is not None:
            return _mapped_page(self._offload_dir, self._page_shape, self._offload_dtype)
        return torch.empty(self._page_shape, dtype=self._offload_dtype, pin_memory=self._pin)

    def _host(self, block_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        if block_id < self._base_count and self._base is not None:
            return self._base._host(block_id)
        page, row = divmod(block_id - self._base_count, self._page_blocks)
        return self._host_keys[page][row], self._host_values[page][row]

    def fetch(self, block_ids: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values of ``block_ids`` in order, resident on the device.

        Returns one ``(keys, values)`` pair per block, each (num_kv_heads, block_size,
        head_dim): views of the device cache, valid until the next ``fetch``.
        """
        assert len(block_ids) <= self._slot_keys.shape[0], "more blocks than device slots"
        wanted = set(block_ids)
        blocks = []
        for block_id in block_ids:
            slot = self._slots.get(block_id)
            if slot is None:
                self.misses += 1
                slot = self._free_slot(wanted)
                host_keys, host_values = self._host(block_id)
                self._slot_keys[slot].copy_(host_keys, non_blocking=self._pin)
                self._slot_values[slot].copy_(host_values, non_blocking=self._pin)
                self._slots[block_id] = slot
            else:
                self.hits += 1
                self._slots.move_to_end(block_id)
            blocks.append((self._slot_keys[slot], self._slot_values[slot]))
        return blocks

    def _free_slot(self, keep: set[int]) -> int:
        if len(self._slots) < self._slot_keys.shape[0]:
            return len(self._slots)
        for block_id in self._slots:  # least recently used first
            if block_id not in keep:
                return self._slots.pop(block_id)
        raise AssertionError("no evictable slot: max_cached_blocks < topk")

    def host_bytes(self) -> int:
        """Bytes of host memory that the blocks' keys and values occupy."""
        block = self._host(0)[0] if self._count else None
        return 0 if block is None else 2 * self._count * block.numel() * block.element_size()


def _mapped_page(directory: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A page backed by a new file in ``directory``, its space reserved on disk.

    The space is reserved (``posix_fallocate``) before the file is mapped: a full disk is
    an :class:`~qllm_core.errors.InsufficientMemoryError` here, not a SIGBUS when a page
    with no space behind it is first written. The file is unlinked once mapped: the mapping
    is all that holds it, so nothing outlives the process.
    """
    numel = math.prod(shape)
    size = numel * dtype.itemsize
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix="quickllama-", suffix=".kv") as file:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(file.fileno(), 0, size)
            else:  # no reservation possible (macOS): sparse, as the OS allows
                file.truncate(size)
            return torch.from_file(file.name, shared=True, size=numel, dtype=dtype).view(shape)
    except OSError as error:
        raise InsufficientMemoryError(
            f"cannot reserve {size / 2**20:,.0f} MiB for a memory page in offload_dir "
            f"{directory!r}: {error.strerror or error}; free space there, point offload_dir "
            "at a larger disk, or shorten the document"
        ) from error
