"""Two-stage attention as Triton kernels: the GPU path of :mod:`qllm_core.kernels.attention`.

Same contract as the torch path (:func:`qllm_core.kernels.attention.two_stage_attention`): one
softmax over the union of local and global keys, plus each local key's probability. Three
launches per execution block and layer:

1. the local stage: flash attention over the local window, with its band as the mask;
2. the global stage: flash attention over the concatenated global segments, started from
   the local stage's running state, so the two stages leave the kernel merged exactly
   (a normalized output ``o`` with log-sum-exp ``lse`` is the online-softmax state
   ``max = lse, sum = 1, acc = o``);
3. each local key's probability under the merged softmax, ``sum_i exp(logit_ij - lse_i)``,
   summed over queries and the group's heads.

Masks are ranges: key ``j`` is seen by query ``i`` exactly when ``lo[j] <= i < hi[j]``.
That expresses the local band and every :class:`~qllm_core.kernels.attention.KeySegment`.

Query rows stack a key head's group of query heads (row ``r`` is query ``r % n``), so
grouped keys are never repeated. Logits and sums are float32. ``q . k`` multiplies in the
inputs' dtype with float32 accumulation (float32 inputs in IEEE precision, not TF32);
``p . v`` in the values' dtype, as flash attention does.

With ``TRITON_INTERPRET=1`` in the environment before triton is first imported (transformers
imports it), the kernels run in Triton's interpreter on CPU tensors; the tests use that on
machines without a GPU.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl

from .attention import KeySegment, LocalWindow, concat_segments, segments_layout

_NEG = tl.constexpr(-1.0e30)
"""A masked logit (log2 units); finite, so a row that has seen no key yet stays NaN-free."""
_LN2 = tl.constexpr(math.log(2.0))
_LOG2E = tl.constexpr(math.log2(math.e))
_NUM_WARPS = 4


class Tiles(NamedTuple):
    """Tile sizes and pipeline depth of one launch."""

    block_d: int
    block_m: int
    block_n: int
    num_stages: int


def tiles(dtype: torch.dtype, head_dim: int, rows: int) -> Tiles:
    """Tiles for ``rows`` query rows of ``head_dim`` in ``dtype``.

    Sized so both kernels' shared memory stays under 99 KiB, the smallest per-block limit
    of NVIDIA GPUs since Ampere (sm_86/sm_89), for head dims up to 256: float32 operands
    take twice the room, so they get one pipeline stage, and half-size tiles past 128.
    """
    block_d = max(16, triton.next_power_of_2(head_dim))
    wide = dtype == torch.float32 and block_d > 128
    block_m = min(32 if wide else 64, max(16, triton.next_power_of_2(rows)))
    return Tiles(block_d, block_m, 32 if wide else 64, 1 if dtype == torch.float32 else 3)


@triton.jit
def _query_tile(q_ptr, b, rows, dims, n_rows, stride_qb, stride_qr, HEAD_DIM: tl.constexpr):
    """Queries (BLOCK_M, BLOCK_D) of ``rows``, zero outside the tensor."""
    return tl.load(
        q_ptr + b * stride_qb + rows[:, None] * stride_qr + dims[None, :],
        mask=(rows[:, None] < n_rows) & (dims[None, :] < HEAD_DIM),
        other=0.0,
    )


@triton.jit
def _key_tile(
    k_ptr, lo_ptr, hi_ptr, b, cols, dims, n_keys, stride_kb, stride_km, HEAD_DIM: tl.constexpr
):
    """Keys of ``cols`` transposed, (BLOCK_D, BLOCK_N), and their query ranges ``lo, hi``."""
    col_ok = cols < n_keys
    k = tl.load(
        k_ptr + b * stride_kb + cols[None, :] * stride_km + dims[:, None],
        mask=col_ok[None, :] & (dims[:, None] < HEAD_DIM),
        other=0.0,
    )
    lo = tl.load(lo_ptr + cols, mask=col_ok, other=1 << 30)
    hi = tl.load(hi_ptr + cols, mask=col_ok, other=0)
    return k, lo, hi


@triton.jit
def _seen(rows, n_queries, n_rows, lo, hi):
    """(BLOCK_M, BLOCK_N): whether each row's query sees each key (row ``r`` is query ``r % n``)."""
    query = rows[:, None] % n_queries
    return (rows[:, None] < n_rows) & (query >= lo[None, :]) & (query < hi[None, :])


@triton.jit
def _attend_kernel(
    q_ptr,
    k_ptr,
    lo_ptr,
    hi_ptr,
    v_ptr,
    out_ptr,
    lse_ptr,
    n_queries,
    n_rows,
    n_keys,
    scale_log2,
    stride_qb,
    stride_qr,
    stride_kb,
    stride_km,
    stride_vb,
    stride_vm,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    RESUME: tl.constexpr,
):
    """Flash attention with range masks; ``RESUME`` continues from ``out``/``lse``.

    q: (B, rows, D); k, v: (B, keys, D), unit stride along D. out (B, rows, D) float32
    and lse (B, rows) float32 (natural log) are contiguous.
    """
    b = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    q = _query_tile(q_ptr, b, rows, dims, n_rows, stride_qb, stride_qr, HEAD_DIM)
    out_ptrs = out_ptr + (b * n_rows + rows[:, None]) * HEAD_DIM + dims[None, :]
    lse_ptrs = lse_ptr + b * n_rows + rows
    out_mask = row_ok[:, None] & (dims[None, :] < HEAD_DIM)
    if RESUME:
        acc = tl.load(out_ptrs, mask=out_mask, other=0.0)
        row_max = tl.load(lse_ptrs, mask=row_ok, other=_NEG) * _LOG2E
        row_sum = tl.where(row_max > _NEG, 1.0, 0.0)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        row_max = tl.full([BLOCK_M], _NEG, dtype=tl.float32)
        row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start in range(0, n_keys, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        k, lo, hi = _key_tile(
            k_ptr, lo_ptr, hi_ptr, b, cols, dims, n_keys, stride_kb, stride_km, HEAD_DIM
        )
        seen = _seen(rows, n_queries, n_rows, lo, hi)
        logits = tl.dot(q, k, input_precision="ieee") * scale_log2
        logits = tl.where(seen, logits, _NEG)
        new_max = tl.maximum(row_max, tl.max(logits, axis=1))
        p = tl.where(seen, tl.exp2(logits - new_max[:, None]), 0.0)
        alpha = tl.exp2(row_max - new_max)
        row_sum = row_sum * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_ptr + b * stride_vb + cols[:, None] * stride_vm + dims[None, :],
            mask=(cols[:, None] < n_keys) & (dims[None, :] < HEAD_DIM),
            other=0.0,
        )
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        row_max = new_max
    seen_any = row_sum > 0
    acc = acc / tl.where(seen_any, row_sum, 1.0)[:, None]
    lse = tl.where(seen_any, (row_max + tl.log2(tl.where(seen_any, row_sum, 1.0))) * _LN2, _NEG)
    tl.store(out_ptrs, acc, mask=out_mask)
    tl.store(lse_ptrs, lse, mask=row_ok)


@triton.jit
def _key_probs_kernel(
    q_ptr,
    k_ptr,
    lo_ptr,
    hi_ptr,
    lse_ptr,
    probs_ptr,
    n_queries,
    n_rows,
    n_keys,
    scale_log2,
    stride_qb,
    stride_qr,
    stride_kb,
    stride_km,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Probs (B, keys) float32: each key's ``exp(logit - lse)`` summed over the rows."""
    b = tl.program_id(1)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    k, lo, hi = _key_tile(
        k_ptr, lo_ptr, hi_ptr, b, cols, dims, n_keys, stride_kb, stride_km, HEAD_DIM
    )
    total = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start in range(0, n_rows, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        q = _query_tile(q_ptr, b, rows, dims, n_rows, stride_qb, stride_qr, HEAD_DIM)
        lse = tl.load(lse_ptr + b * n_rows + rows, mask=rows < n_rows, other=0.0) * _LOG2E
        seen = _seen(rows, n_queries, n_rows, lo, hi)
        logits = tl.dot(q, k, input_precision="ieee") * scale_log2
        p = tl.where(seen, tl.exp2(logits - lse[:, None]), 0.0)
        total += tl.sum(p, axis=0)
    tl.store(probs_ptr + b * n_keys + cols, total, mask=cols < n_keys)


def two_stage_attention(
    q_local: torch.Tensor,
    local: LocalWindow,
    q_global: torch.Tensor,
    global_segments: Sequence[KeySegment],
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton path of :func:`~qllm_core.kernels.attention.two_stage_attention` (same API)."""
    kv_heads, group, n, dim = q_local.shape
    m, dtype = local.keys.shape[1], local.keys.dtype
    out = q_local.new_empty(kv_heads, group * n, dim, dtype=torch.float32)
    lse = q_local.new_empty(kv_heads, group * n, dtype=torch.float32)
    q = _rows(q_local, dtype)
    keys = _unit_stride(local.keys)
    band = _band_ranges(n, m, local.window, str(keys.device))
    local_logits = _Logits(q, keys, band, n, scaling)
    _attend(local_logits, local.values, out, lse, resume=False)
    segments = [seg for seg in global_segments if seg.keys.shape[1]]
    if segments:
        g_keys, g_values = concat_segments(segments)
        ranges = _segment_ranges(segments_layout(segments), str(keys.device))
        global_logits = _Logits(_rows(q_global, dtype), g_keys, ranges, n, scaling)
        _attend(global_logits, g_values, out, lse, resume=True)
    local_probs = q_local.new_empty(kv_heads, m, dtype=torch.float32)
    _launch(_key_probs_kernel, local_logits, (lse, local_probs), over_keys=True)
    return out.view(kv_heads, group, n, dim).to(local.values.dtype), local_probs


class _Logits(NamedTuple):
    """What both kernels score.

    Queries (B, rows, D) against keys (B, m, D); the key ranges each query row sees; the
    query count ``n``; the softmax scaling.
    """

    q: torch.Tensor
    keys: torch.Tensor
    ranges: tuple[torch.Tensor, torch.Tensor]
    n: int
    scaling: float


def _attend(
    logits: _Logits, values: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, *, resume: bool
) -> None:
    """Attention over ``logits``' keys and ``values`` (B, m, D) into out/lse (or on from them)."""
    keys = _unit_stride(logits.keys)
    values = _unit_stride(values.to(keys.dtype))
    _launch(
        _attend_kernel,
        logits._replace(keys=keys),
        (values, out, lse),
        over_keys=False,
        stride_vb=values.stride(0),
        stride_vm=values.stride(1),
        RESUME=resume,
    )


def _launch(
    kernel: Any,
    logits: _Logits,
    tensors: tuple[torch.Tensor, ...],
    *,
    over_keys: bool,
    **named: Any,
) -> None:
    """Launch ``kernel`` with what both kernels take: queries, keys, ranges, sizes, tiles.

    The grid is (tiles of query rows, or of keys when ``over_keys``) x batch.
    """
    q, keys = logits.q, logits.keys
    batch, rows, dim = q.shape
    t = tiles(q.dtype, dim, rows)
    grid = triton.cdiv(keys.shape[1], t.block_n) if over_keys else triton.cdiv(rows, t.block_m)
    kernel[(grid, batch)](
        q,
        keys,
        *logits.ranges,
        *tensors,
        n_queries=logits.n,
        n_rows=rows,
        n_keys=keys.shape[1],
        scale_log2=logits.scaling / math.log(2.0),
        stride_qb=q.stride(0),
        stride_qr=q.stride(1),
        stride_kb=keys.stride(0),
        stride_km=keys.stride(1),
        HEAD_DIM=dim,
        BLOCK_D=t.block_d,
        BLOCK_M=t.block_m,
        BLOCK_N=t.block_n,
        num_warps=_NUM_WARPS,
        num_stages=t.num_stages,
        **named,
    )


def _rows(q: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(H, G, n, D) -> (H, G * n, D) in the keys' ``dtype``, with unit stride along D."""
    heads, group, n, dim = q.shape
    return _unit_stride(q.reshape(heads, group * n, dim).to(dtype))


def _unit_stride(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@functools.lru_cache(maxsize=64)
def _band_ranges(n: int, m: int, window: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Local band: query ``i`` (key index ``i + m - n``) sees the ``window`` keys up to its own."""
    lo = torch.arange(m, device=device, dtype=torch.int32) - (m - n)
    return lo, lo + window


@functools.lru_cache(maxsize=64)
def _segment_ranges(
    layout: tuple[tuple[int, int | None], ...], device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranges of segments given as ``(size, causal_offset)``.

    Key ``j`` of a segment with offset ``c`` is seen by queries ``i >= j - c``; a key of a
    segment without offset by every query.
    """
    lo = torch.cat(
        [
            torch.arange(size, dtype=torch.int32) - offset
            if offset is not None
            else torch.zeros(size, dtype=torch.int32)
            for size, offset in layout
        ]
    ).to(device)
    return lo, torch.full_like(lo, 1 << 30)
