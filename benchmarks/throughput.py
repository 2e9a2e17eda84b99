"""Prefill speed and peak memory against length, one fresh process per point.

A point is one (mode, length): load the engine, warm it up on a short input, then prefill a
needle document of ``length`` tokens with ``max_new_tokens=1`` and read
``answer.stats.prefill_seconds``. Peak memory comes from :mod:`benchmarks.memory`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qllm_core.spec import EngineSpec

from . import memory
from .engine_args import to_args
from .tasks import make_sample

_RESULT_PREFIX = "BENCHMARK-POINT "
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Point:
    """One measured (mode, length)."""

    mode: str
    length: int
    status: str
    """``ok``, ``oom`` (out of memory), ``timeout`` or ``error``."""
    tokens_read: int = 0
    prefill_seconds: float = 0.0
    tokens_per_second: float = 0.0
    baseline_mib: float = 0.0
    """Memory in use before the request (RSS on CPU, allocated on CUDA)."""
    peak_mib: float = 0.0
    growth_mib: float = 0.0
    """Peak minus baseline: what the request itself needed."""
    exact: bool = True
    """False when the CPU peak was set by model loading, not by the request."""
    memory_kind: str = "cpu-rss"
    kv_mib_per_1k_tokens: float = 0.0
    """Size of the model's keys and values for 1,024 tokens (what offloading must hold)."""
    engine: dict[str, Any] | None = None
    """``{"model": name, "config": {...}}`` of the engine that was measured."""
    message: str = ""


def measure_here(engine: Any, mode: str, length: int, seed: int = 0) -> Point:
    """Measure one point in this process (call it in a fresh process: RSS is process-wide)."""
    sample = make_sample(engine.tokenizer, "needle", length, 0.5, seed=seed)
    warm = make_sample(engine.tokenizer, "needle", 128, 0.5, seed=seed)
    engine.answer(warm.document, warm.question, mode=mode, max_new_tokens=1)
    device = engine.model.device
    start = memory.mark(device)
    try:
        answer = engine.answer(sample.document, sample.question, mode=mode, max_new_tokens=1)
    except (MemoryError, RuntimeError) as error:
        if not _is_oom(error):
            raise
        return Point(mode, length, "oom", message=str(error).splitlines()[0][:200])
    peak, growth, exact = memory.peak_since(start, device)
    stats = answer.stats
    return Point(
        mode,
        length,
        "ok",
        tokens_read=stats.tokens_read,
        prefill_seconds=round(stats.prefill_seconds, 3),
        tokens_per_second=round(stats.tokens_read / stats.prefill_seconds, 1),
        baseline_mib=round(start.baseline_mib, 1),
        peak_mib=round(peak, 1),
        growth_mib=round(growth, 1),
        exact=exact,
        memory_kind="cuda-allocated" if start.device == "cuda" else "cpu-rss",
        kv_mib_per_1k_tokens=round(kv_mib_per_1k_tokens(engine), 2),
        engine={"model": engine.model_name, "config": asdict(engine.config)},
    )


def kv_mib_per_1k_tokens(engine: Any) -> float:
    """MiB of keys and values that 1,024 tokens occupy, in the offloaded dtype."""
    import torch

    from qllm_core.memory.capacity import kv_bytes_per_token

    dtype_name = getattr(engine.config, "offload_dtype", None)
    dtype = getattr(torch, dtype_name) if dtype_name else engine.model.dtype
    return kv_bytes_per_token(engine.model.config, dtype) * 1024 / memory.MIB


def measure_in_subprocess(
    spec: EngineSpec, mode: str, length: int, *, timeout: float, memory_fraction: float = 0.75
) -> Point:
    """Measure one point in a fresh Python process and return what it reported."""
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        "point",
        "--mode",
        mode,
        "--length",
        str(length),
        "--memory-fraction",
        str(memory_fraction),
        *to_args(spec),
    ]
    try:
        done = subprocess.run(
            command, cwd=_PACKAGE_ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return Point(mode, length, "timeout", message=f"no result within {timeout:.0f} s")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_RESULT_PREFIX):
            return Point(**json.loads(line[len(_RESULT_PREFIX) :]))
    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
    status = "oom" if done.returncode in (-9, 137) else "error"
    return Point(mode, length, status, message=f"exit code {done.returncode}: {tail[0][:200]}")


def point_main(spec: EngineSpec, mode: str, length: int, memory_fraction: float) -> int:
    """Entry point of the child process: measure and print one result line."""
    if (spec.device or "cpu").startswith("cpu") and memory_fraction > 0:
        memory.limit_address_space(memory_fraction)
    try:
        engine = spec.load(progress=False)
        point = measure_here(engine, mode, length)
    except MemoryError as error:
        point = Point(mode, length, "oom", message=str(error)[:200])
    print(_RESULT_PREFIX + json.dumps(asdict(point)), flush=True)
    return 0


def sweep(
    spec: EngineSpec,
    modes: tuple[str, ...],
    lengths: tuple[int, ...],
    *,
    timeout: float,
    memory_fraction: float = 0.75,
    log: Any = print,
) -> list[Point]:
    """Measure every (mode, length), lengths outer so each length's modes run back to back."""
    points = []
    for length in lengths:
        for mode in modes:
            started = time.perf_counter()
            point = measure_in_subprocess(
                spec, mode, length, timeout=timeout, memory_fraction=memory_fraction
            )
            log(
                f"  {mode:>9} {length:>7} tokens: {point.status}, "
                f"{point.tokens_per_second:.0f} tok/s, peak growth {point.growth_mib:.0f} MiB "
                f"({time.perf_counter() - started:.0f} s)"
            )
            points.append(point)
    return points


def _is_oom(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in text or "allocate" in text
