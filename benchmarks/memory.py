"""Peak memory of one request, measured honestly.

On CPU the only trustworthy number is the process's peak resident set size, which is
process-wide: so each measurement runs in a fresh process, and we report the peak
(``ru_maxrss``) and its growth over the resident size just before the request. On CUDA we
report ``torch.cuda.max_memory_allocated`` over the allocation before the request.
"""

from __future__ import annotations

import gc
import resource
import sys
from dataclasses import dataclass
from typing import Any

MIB = 2**20


@dataclass(frozen=True)
class MemoryMark:
    """Memory in use just before a request."""

    device: str
    baseline_mib: float
    peak_before_mib: float


def mark(device: Any) -> MemoryMark:
    """Record memory before a request (and reset CUDA's peak counter)."""
    gc.collect()
    if _is_cuda(device):
        import torch

        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        allocated = torch.cuda.memory_allocated(device) / MIB
        return MemoryMark("cuda", allocated, allocated)
    import psutil

    rss = psutil.Process().memory_info().rss / MIB
    return MemoryMark("cpu", rss, _max_rss_mib())


def peak_since(start: MemoryMark, device: Any) -> tuple[float, float, bool]:
    """``(peak_mib, growth_mib, exact)`` since ``start``.

    ``exact`` is False on CPU when the request never exceeded the peak the process had
    already reached (while loading the model): then ``growth_mib`` is only an upper bound.
    """
    if start.device == "cuda":
        import torch

        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / MIB
        return peak, peak - start.baseline_mib, True
    peak = _max_rss_mib()
    return peak, max(0.0, peak - start.baseline_mib), peak > start.peak_before_mib


def limit_address_space(fraction: float) -> None:
    """Cap this (CPU-only) process's memory so an allocation fails instead of the machine.

    Allocations over the cap raise, which a caller reports as out of memory.
    """
    import psutil

    limit = int(psutil.virtual_memory().total * fraction)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _max_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak * 1024 / MIB


def _is_cuda(device: Any) -> bool:
    return str(device).startswith("cuda")
