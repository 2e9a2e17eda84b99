"""Will a request's keys and values fit? Checked before reading, not found out by the OOM killer.

Q-LLM keeps every token's keys and values (the memory blocks) for the whole request, so
what a request needs grows linearly with its length: ``tokens x kv_bytes_per_token``. The
engine compares that with what the tier holding them has free, before the first token is
read, and raises :class:`~qllm_core.errors.InsufficientMemoryError` with the ways out.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PretrainedConfig

from ..config import QLLMConfig
from ..errors import ConfigError, InsufficientMemoryError
from ..models.family import family_of
from ..modes import mode_spec

GIB = 2**30
_MEMINFO = Path("/proc/meminfo")
_CGROUP = Path("/proc/self/cgroup")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_NO_LIMIT = 2**62
"""cgroup v1 reports "no limit" as a huge number (the largest page-aligned int64)."""


def kv_bytes_per_token(model_config: PretrainedConfig, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token takes across all layers, stored in ``dtype``."""
    shape = family_of(model_config).kv_shape(model_config)
    return 2 * shape.layers * shape.kv_heads * shape.head_dim * dtype.itemsize


def available_ram_bytes() -> int | None:
    """RAM this process can still take (Linux; ``None`` elsewhere).

    The kernel's ``MemAvailable``, or less where a memory cgroup (a container's limit)
    allows less.
    """
    limits = [_meminfo_available(), *_cgroup_available()]
    known = [value for value in limits if value is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_available() -> list[int]:
    """Room left under each memory limit of this process's cgroups, v1 and v2, ancestors too.

    Room is the limit minus the usage, plus the inactive file cache the kernel reclaims
    before it would kill anything (what container runtimes call the working set).
    """
    try:
        lines = _CGROUP.read_text().splitlines()
    except OSError:
        return []
    rooms = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: memory.max, memory.current
            root, files = _CGROUP_ROOT, ("memory.max", "memory.current", "inactive_file")
            if not (root / "cgroup.controllers").exists():
                root = root / "unified"
        elif "memory" in controllers.split(","):  # v1
            root = _CGROUP_ROOT / "memory"
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        folder = root / path.lstrip("/")
        while True:
            room = _cgroup_room(folder, *files)
            if room is not None:
                rooms.append(room)
            if folder == root or root not in folder.parents:
                break
            folder = folder.parent
    return rooms


def _cgroup_room(folder: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    try:
        limit = (folder / limit_file).read_text().strip()
        usage = int((folder / usage_file).read_text())
        stat = (folder / "memory.stat").read_text().split()
    except (OSError, ValueError):
        return None
    if limit == "max" or int(limit) >= _NO_LIMIT:
        return None
    pairs = dict(zip(stat[::2], stat[1::2], strict=False))
    return max(0, int(limit) - usage + int(pairs.get(inactive_key, 0)))


def available_device_bytes(device: torch.device) -> int | None:
    """Free memory where ``device`` keeps tensors: a CUDA device's own, otherwise RAM."""
    if device.type != "cuda":
        return available_ram_bytes()
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


@dataclass(frozen=True)
class KVNeed:
    """The bytes of keys and values a request keeps, and where (``tier``)."""

    tier: str
    """``device`` (the model's own attention), ``ram`` or ``disk`` (the offload dir)."""
    nbytes: int
    where: str
    """The tier in words, for errors."""
    fixes: str
    """How to make a request that does not fit, fit."""


NO_KV = KVNeed("ram", 0, "RAM", "")
"""What a request that keeps nothing new holds (a question read on from a memory)."""


def kv_need(
    tokens: int, *, model_config: PretrainedConfig, config: QLLMConfig, dtype: torch.dtype
) -> KVNeed:
    """What ``tokens`` tokens' keys and values take in ``config.mode``, and where.

    Modes ``qllm`` and ``infllm`` keep them in host memory (RAM, or the disk tier when
    ``config.offload_dir`` is set) in the offload dtype; ``full`` keeps them on the device
    in the model's dtype; ``streaming`` keeps only a window (0 bytes counted).
    """
    spec = mode_spec(config.mode)
    if not spec.keeps_all_tokens:
        return NO_KV
    if not spec.block_memory:
        need = tokens * kv_bytes_per_token(model_config, dtype)
        fixes = "use mode 'qllm', which keeps them off the device in memory blocks"
        return KVNeed("device", need, "device memory", fixes)
    offload = getattr(torch, config.offload_dtype) if config.offload_dtype else dtype
    need = tokens * kv_bytes_per_token(model_config, offload)
    fixes = _qllm_fixes(config, offload)
    if config.offload_dir is None:
        return KVNeed("ram", need, "RAM", fixes)
    where = f"free disk space in offload_dir {config.offload_dir!r}"
    return KVNeed("disk", need, where, fixes)


def free_bytes(need: KVNeed, config: QLLMConfig, device: torch.device) -> int | None:
    """What ``need``'s tier has free now (``None``: not known)."""
    if need.tier == "device":
        return available_device_bytes(device)
    if need.tier == "disk":
        assert config.offload_dir is not None
        _check_offload_dir(config.offload_dir)
        return shutil.disk_usage(config.offload_dir).free
    return available_ram_bytes()


def check_fits(
    tokens: int,
    *,
    model_config: PretrainedConfig,
    config: QLLMConfig,
    device: torch.device,
    dtype: torch.dtype,
) -> KVNeed:
    """``tokens`` tokens' keys and values (:func:`kv_need`), if their tier can hold them.

    Raises ``InsufficientMemoryError`` naming the ways out when it cannot.
    """
    need = kv_need(tokens, model_config=model_config, config=config, dtype=dtype)
    if not need.nbytes:
        return need
    free = free_bytes(need, config, device)
    if free is not None and need.nbytes > free:
        where = f"{device.type} memory" if need.tier == "device" else need.where
        raise InsufficientMemoryError(
            f"reading {tokens:,} tokens in mode {config.mode!r} keeps "
            f"{need.nbytes / GIB:.1f} GiB of keys and values, and {where} has "
            f"{free / GIB:.1f} GiB available. To fit: {need.fixes}; or pass a shorter document."
        )
    return need


def _check_offload_dir(path: str) -> None:
    if not (os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)):
        raise ConfigError(
            f"QLLMConfig.offload_dir {path!r} is not a writable directory; create it, "
            "or choose another (or None to keep memory blocks in RAM)"
        )


def _qllm_fixes(config: QLLMConfig, offload: torch.dtype) -> str:
    fixes = []
    if offload.itemsize > 2:
        fixes.append("set QLLMConfig.offload_dtype='float16' or 'bfloat16' (half the bytes)")
    if config.offload_dir is None:
        fixes.append("set QLLMConfig.offload_dir to a directory on a disk with room (disk tier)")
    else:
        fixes.append("point offload_dir at a disk with more room")
    return "; ".join(fixes)
