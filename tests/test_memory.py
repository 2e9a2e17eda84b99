"""The tiered block store: host copies, bounded device cache with LRU eviction."""

from __future__ import annotations

import torch

from qllm_core.memory.blocks import BlockShape, BlockStore, Tiers


def _store(**kw) -> BlockStore:
    tiers = dict(device=torch.device("cpu"), dtype=torch.float32, max_cached_blocks=3)
    return BlockStore(BlockShape(num_kv_heads=2, block_size=3, head_dim=4), Tiers(**(tiers | kw)))


def _fill(store: BlockStore, count: int) -> list[torch.Tensor]:
    blocks = []
    for i in range(count):
        keys = torch.full((2, 3, 4), float(i))
        blocks.append(keys)
        assert store.append(keys, -keys, keys[None, :, 0]) == range(i, i + 1)
    return blocks


def _fetch(store: BlockStore, block_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The fetched blocks side by side: (heads, len(block_ids) * block_size, head_dim) each."""
    blocks = store.fetch(block_ids)
    return torch.cat([k for k, _ in blocks], dim=1), torch.cat([v for _, v in blocks], dim=1)


def test_fetch_returns_blocks_in_order():
    store = _store()
    blocks = _fill(store, 5)
    keys, values = _fetch(store, [4, 1])
    assert keys.shape == (2, 6, 4)
    torch.testing.assert_close(keys, torch.cat([blocks[4], blocks[1]], dim=1))
    torch.testing.assert_close(values, -keys)
    torch.testing.assert_close(store.representatives[:, 0, 0], torch.arange(5.0))


def test_device_cache_is_bounded_and_evicts_least_recently_used():
    store = _store()
    _fill(store, 40)  # many more blocks than the 17 representative slots it starts with
    store.fetch([0, 1, 2])
    assert store.misses == 3
    store.fetch([0])  # hit: 0 becomes most recent; 1 is now least recent
    store.fetch([5])  # miss: evicts 1
    store.fetch([2, 0, 5])  # all three on the device
    assert store.hits == 4 and store.misses == 4
    store.fetch([1])  # evicted: a miss, which evicts 2 (now the least recent)
    store.fetch([0, 5])
    assert store.hits == 6 and store.misses == 5
    store.fetch([2])
    assert store.misses == 6
    for start in range(0, 40, 3):  # three at a time: the device holds only the last three
        store.fetch(list(range(start, min(start + 3, 40))))
    misses = store.misses
    store.fetch([36, 37, 38])
    assert store.misses == misses + 1  # 39 took one of the three slots
    keys, _ = _fetch(store, [39, 7])
    assert keys[0, 0, 0] == 39 and keys[0, 3, 0] == 7


def test_blocks_requested_together_are_never_evicted_by_each_other():
    store = _store(max_cached_blocks=2)
    _fill(store, 4)
    store.fetch([0, 1])
    keys, _ = _fetch(store, [2, 3])
    assert keys[0, :, 0].tolist() == [2, 2, 2, 3, 3, 3]


def test_host_copies_in_lower_precision():
    store = _store(offload_dtype=torch.bfloat16)
    _fill(store, 2)
    assert store.host_bytes() == 2 * 2 * (2 * 3 * 4) * 2  # blocks x (k, v) x elements x 2 B
    keys, _ = _fetch(store, [1])
    assert keys.dtype == torch.float32  # computed in the model's dtype


def test_blocks_span_host_pages(monkeypatch):
    from qllm_core.memory import blocks as memory

    block_bytes = 2 * 3 * 4 * 4  # heads x block_size x head_dim x float32
    monkeypatch.setattr(memory, "PAGE_BYTES", 2 * block_bytes)  # two blocks per page
    store = _store(max_cached_blocks=5)
    blocks = _fill(store, 5)
    assert len(store._host_keys) == 3
    keys, values = _fetch(store, [0, 2, 4, 3, 1])
    torch.testing.assert_close(keys, torch.cat([blocks[i] for i in (0, 2, 4, 3, 1)], dim=1))
    torch.testing.assert_close(values, -keys)
    assert store.host_bytes() == 5 * 2 * block_bytes


def test_blocks_appended_together_equal_blocks_appended_one_by_one(monkeypatch):
    from qllm_core.memory import blocks as memory

    monkeypatch.setattr(memory, "PAGE_BYTES", 2 * (2 * 3 * 4 * 4))  # two blocks per page
    single, together = _store(max_cached_blocks=5), _store(max_cached_blocks=5)
    blocks = _fill(single, 5)
    keys = torch.cat(blocks[:2], dim=1)
    reprs = torch.stack([b[:, 0] for b in blocks])
    assert together.append(keys, -keys, reprs[:2]) == range(0, 2)
    keys = torch.cat(blocks[2:], dim=1)  # three blocks: across a page boundary
    assert together.append(keys, -keys, reprs[2:]) == range(2, 5)
    order = [4, 0, 3, 1, 2]
    for a, b in zip(_fetch(single, order), _fetch(together, order), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(together.representatives, single.representatives)


def test_disk_tier_holds_the_same_blocks_and_leaves_no_files(tmp_path, monkeypatch):
    from qllm_core.memory import blocks as memory

    monkeypatch.setattr(memory, "PAGE_BYTES", 2 * (2 * 3 * 4 * 2))  # two float16 blocks per page
    ram = _store(max_cached_blocks=5, offload_dtype=torch.float16)
    disk = _store(max_cached_blocks=5, offload_dtype=torch.float16, offload_dir=str(tmp_path))
    blocks = _fill(ram, 5)
    _fill(disk, 5)
    assert len(disk._host_keys) == 3  # pages were made...
    assert list(tmp_path.iterdir()) == []  # ...and their files unlinked once mapped
    order = [4, 0, 3, 1, 2]
    for a, b in zip(_fetch(ram, order), _fetch(disk, order), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    torch.testing.assert_close(_fetch(disk, [3])[0], blocks[3])
    assert disk.host_bytes() == ram.host_bytes()
