"""Two-stage attention merged exactly: one softmax over the union of local and global keys.

This is the torch path; it runs on CPU and GPU. The Triton path
(:mod:`qllm_core.kernels.triton_attention`) meets the same contract with fused kernels; CUDA
devices use it when triton is installed (:mod:`qllm_core.kernels.backends`).

Shapes use ``kv_heads`` (H), ``group`` (G = query heads per key head), ``n`` queries,
``m`` keys and ``head_dim`` (D). A key head's group of query heads is stacked along the
query axis, so keys are never repeated.

Each stage returns its output with the log-sum-exp of its logits; the two are merged
exactly, as one softmax over the union of keys weighs them:
``out = sum_s exp(lse_s - lse) * out_s`` with ``lse = logaddexp(lse_s)``.

- Local stage: dense, because the probability each local key receives is needed anyway
  (it feeds the representative keys). Queries go in chunks of :data:`LOCAL_CHUNK`, each
  against only the ``window + chunk - 1`` keys its band can reach, so few masked logits
  are computed.
- Global stage: on the CPU, PyTorch's fused flash-attention kernel (it returns the
  log-sum-exp); elsewhere dense.

Masks are never passed as tensors: a segment says which keys each query sees with one
integer (:attr:`KeySegment.causal_offset`), and mask tensors are built once per shape.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

LOCAL_CHUNK = 64
"""Queries per chunk of the local stage (when it divides the execution block)."""

_MIN_EXPONENT = -80.0
"""Exponents are clamped here: exp(-80) ~ 2e-35 is negligible next to a row's maximum, 1,
and smaller arguments (underflow) take the exponential's slow path on the CPU."""

_FLASH_CPU: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = getattr(
    torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None
)
"""PyTorch's fused CPU attention returning ``(out, logsumexp)``; ``None`` if absent."""


@dataclass(frozen=True)
class KeySegment:
    """Keys (rotated for their stage) and values of one global segment.

    keys, values: (H, m, D). ``causal_offset``: ``None`` when every query sees every key;
    otherwise query ``i`` sees key ``j`` only when ``j <= i + causal_offset``.
    """

    keys: torch.Tensor
    values: torch.Tensor
    causal_offset: int | None = None


@dataclass(frozen=True)
class LocalWindow:
    """Keys and values of the latest ``m`` positions, the last ``n`` being the queries' own.

    keys, values: (H, m, D), with ``m >= n``. Query ``i`` (at key index ``i + m - n``)
    sees the ``window`` keys up to and including its own: relative positions, causal.
    """

    keys: torch.Tensor
    values: torch.Tensor
    window: int


def two_stage_attention(
    q_local: torch.Tensor,
    local: LocalWindow,
    q_global: torch.Tensor,
    global_segments: Sequence[KeySegment],
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attend to the local window and the global segments with one shared softmax.

    Args:
        q_local: (H, G, n, D) queries rotated for the local stage.
        local: the local window.
        q_global: (H, G, n, D) queries rotated for the global stage.
        global_segments: init tokens, retrieved blocks, remainder (any may be empty).
        scaling: softmax scale (usually ``D ** -0.5``).

    Returns:
        out: (H, G, n, D), in the dtype of the local values.
        local_probs: (H, m) float32: each local key's attention probability summed over
            the group's heads and the queries (feeds the representative keys).
    """
    kv_heads, group, n, dim = q_local.shape
    if n == 1:
        return _single_query(q_local, local, q_global, global_segments, scaling)
    band = _Band.of(local, n)
    probs, row_max = _unnormalized_probs(
        band.chunk_queries(q_local.float() * scaling),
        band.chunk_keys(local.keys.float()),
        _band_mask(band.chunk, band.width, local.window, group, str(q_local.device)),
    )
    out = band.unchunk(torch.bmm(probs, band.chunk_keys(local.values.float())))
    lse = band.unchunk(probs.sum(dim=-1).log_() + row_max)
    row_max = band.unchunk(row_max)
    segments = [seg for seg in global_segments if seg.keys.shape[1]]
    if segments:
        keys, values, mask = _concat(segments, n, group)
        q = q_global.reshape(kv_heads, group * n, dim)
        out_g, lse_g = _global_stage(q, keys, values, mask, scaling)
        merged = torch.logaddexp(lse, lse_g)
        out_g *= (lse_g - merged).exp_()[..., None]
        lse = merged
    # probs hold exp(logit - row_max); under the merged softmax each is exp(logit - lse).
    weight = (row_max - lse).exp_()
    out *= weight[..., None]
    if segments:
        out += out_g
    weight = band.chunk_queries(weight.view(kv_heads, group, n, 1))
    local_probs = band.key_sums(torch.bmm(weight.mT, probs))
    return out.view(kv_heads, group, n, dim).to(local.values.dtype), local_probs


def _single_query(
    q_local: torch.Tensor,
    local: LocalWindow,
    q_global: torch.Tensor,
    global_segments: Sequence[KeySegment],
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`two_stage_attention` for one query (decoding): one softmax over every key seen.

    With one query no mask is needed: it sees the last ``window`` local keys and a prefix
    of each global segment (``causal_offset + 1`` keys), so those keys are sliced, not
    masked, and both stages' logits go through one softmax: a handful of kernels per
    layer and token instead of two stages and a merge.
    """
    kv_heads, group, _, dim = q_local.shape
    m = local.keys.shape[1]
    first = max(0, m - local.window)
    keys = [local.keys[:, first:]]
    values = [local.values[:, first:]]
    for seg in global_segments:
        seen = seg.keys.shape[1] if seg.causal_offset is None else seg.causal_offset + 1
        if seen > 0:
            keys.append(seg.keys[:, :seen])
            values.append(seg.values[:, :seen])
    logits = [torch.bmm(q_local.view(kv_heads, group, dim).float(), keys[0].float().mT)]
    if len(keys) > 1:
        q = q_global.view(kv_heads, group, dim).float()
        logits.append(torch.bmm(q, torch.cat(keys[1:], dim=1).float().mT))
    probs = torch.cat(logits, dim=-1).mul_(scaling).softmax(dim=-1)
    out = torch.bmm(probs, torch.cat(values, dim=1).float())
    local_probs = probs[..., : m - first].sum(dim=1)
    if first:
        local_probs = torch.cat([local_probs.new_zeros(kv_heads, first), local_probs], dim=1)
    return out.view(kv_heads, group, 1, dim).to(local.values.dtype), local_probs


@dataclass(frozen=True)
class _Band:
    """How the local stage splits ``n`` queries into chunks over a window of ``m`` keys.

    Chunk ``t`` holds queries ``[t * chunk, (t + 1) * chunk)`` and the ``width`` keys from
    key index ``t * chunk``: with ``m = window + n - 1`` these are exactly the keys its
    band reaches. Otherwise (the first blocks of an input, decoding) one chunk holds all.
    """

    n: int
    m: int
    chunk: int
    width: int

    @classmethod
    def of(cls, local: LocalWindow, n: int) -> _Band:
        m = local.keys.shape[1]
        if n % LOCAL_CHUNK == 0 and n > LOCAL_CHUNK and m == local.window + n - 1:
            return cls(n, m, LOCAL_CHUNK, local.window + LOCAL_CHUNK - 1)
        return cls(n, m, n, m)

    @property
    def chunks(self) -> int:
        return self.n // self.chunk

    def chunk_queries(self, x: torch.Tensor) -> torch.Tensor:
        """(H, G, n, E) -> (H * chunks, G * chunk, E)."""
        heads, group, n, e = x.shape
        x = x.view(heads, group, self.chunks, self.chunk, e).transpose(1, 2)
        return x.reshape(heads * self.chunks, group * self.chunk, e)

    def chunk_keys(self, x: torch.Tensor) -> torch.Tensor:
        """(H, m, D) -> (H * chunks, width, D): each chunk's overlapping span of keys."""
        heads, _, dim = x.shape
        if self.chunks == 1:
            return x
        head_stride, key_stride, dim_stride = x.stride()
        spans = x.as_strided(  # a view of x's own storage; the reshape copies it once
            (heads, self.chunks, self.width, dim),
            (head_stride, self.chunk * key_stride, key_stride, dim_stride),
        )
        return spans.reshape(heads * self.chunks, self.width, dim)

    def unchunk(self, x: torch.Tensor) -> torch.Tensor:
        """(H * chunks, G * chunk, ...) -> (H, G * n, ...), the inverse of chunk_queries."""
        rest = x.shape[2:]
        group = x.shape[1] // self.chunk
        x = x.view(-1, self.chunks, group, self.chunk, *rest).transpose(1, 2)
        return x.reshape(x.shape[0], group * self.n, *rest)

    def key_sums(self, x: torch.Tensor) -> torch.Tensor:
        """Per-chunk sums over keys (H * chunks, 1, width) -> (H, m), overlaps added."""
        x = x.view(-1, self.chunks, self.width)
        if self.chunks == 1:
            return x[:, 0]
        total = x.new_zeros(x.shape[0], self.m)
        for t in range(self.chunks):
            total[:, t * self.chunk : t * self.chunk + self.width] += x[:, t]
        return total


def _unnormalized_probs(
    q: torch.Tensor, keys: torch.Tensor, mask: _Mask | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(logits - row max), zero where masked: (B, Q, m), and the row max (B, Q).

    q: (B, Q, D) scaled queries; keys: (B, m, D); mask: over (Q, m), or ``None``.
    Every row must allow at least one key.
    """
    transposed = keys.transpose(1, 2)
    if mask is None:
        logits = torch.bmm(q, transposed)
    else:
        logits = torch.baddbmm(mask.bias, q, transposed)
    row_max = logits.amax(dim=-1)
    probs = logits.sub_(row_max[..., None]).clamp_(min=_MIN_EXPONENT).exp_()
    if mask is not None:
        probs.mul_(mask.keep)
    return probs, row_max


def _global_stage(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: _Mask | None,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, Q, D) queries over (H, m, D) keys -> out (H, Q, D), log-sum-exp (H, Q), float32.

    The arithmetic is float32 whatever the model's dtype, as in the local stage.
    A query that sees no key gets a log-sum-exp at about the dtype's minimum, so the
    merge gives this stage no weight for it.
    """
    if _FLASH_CPU is not None and q.device.type == "cpu":
        out, lse = _FLASH_CPU(
            q.float()[:, None],
            keys.float()[:, None],
            values.float()[:, None],
            attn_mask=None if mask is None else mask.bias,
            scale=scaling,
        )
        return out[:, 0], lse[:, 0]
    probs, row_max = _unnormalized_probs(q.float() * scaling, keys.float(), mask)
    total = probs.sum(dim=-1)
    lse = torch.where(total > 0, total.log() + row_max, torch.finfo(torch.float32).min)
    return torch.bmm(probs, values.float()) / total.clamp(min=1e-30)[..., None], lse


def concat_segments(segments: Sequence[KeySegment]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values (H, m, D) of ``segments`` side by side."""
    keys = torch.cat([seg.keys for seg in segments], dim=1)
    return keys, torch.cat([seg.values for seg in segments], dim=1)


def segments_layout(segments: Sequence[KeySegment]) -> tuple[tuple[int, int | None], ...]:
    """``(size, causal_offset)`` of each segment: all a mask needs to know of them."""
    return tuple((seg.keys.shape[1], seg.causal_offset) for seg in segments)


def _concat(
    segments: Sequence[KeySegment], n: int, group: int
) -> tuple[torch.Tensor, torch.Tensor, _Mask | None]:
    """Keys, values and mask (G*n, m) of ``segments`` side by side."""
    keys, values = concat_segments(segments)
    layout = segments_layout(segments)
    if all(offset is None for _, offset in layout):
        return keys, values, None
    return keys, values, _segments_mask(layout, n, group, str(keys.device))


class _Mask(NamedTuple):
    """Which keys each query sees, in the two forms the kernels take; built once per shape.

    keep: (Q, m) float32, 1 where seen and 0 where masked. bias: (Q, m) float32, additive:
    0 where seen, the dtype's minimum where masked. A finite minimum (not -inf) keeps fully
    masked rows finite and the kernels on their fast path.
    """

    keep: torch.Tensor
    bias: torch.Tensor

    @classmethod
    def of(cls, keep: torch.Tensor) -> _Mask:
        keep = keep.to(torch.float32)
        return cls(keep, (1.0 - keep).mul_(torch.finfo(torch.float32).min))


@functools.lru_cache(maxsize=64)
def _band_mask(n: int, m: int, window: int, group: int, device: str) -> _Mask:
    """Mask (G*n, m) of a local band: query i (key index i + m - n) sees its window."""
    own = torch.arange(n, device=device)[:, None] + (m - n)
    cols = torch.arange(m, device=device)[None]
    keep = (cols <= own) & (cols > own - window)
    return _Mask.of(keep.repeat(group, 1))


@functools.lru_cache(maxsize=64)
def _segments_mask(
    layout: tuple[tuple[int, int | None], ...], n: int, group: int, device: str
) -> _Mask:
    """Mask (G*n, m) of segments given as ``(size, causal_offset)``."""
    rows = torch.arange(n, device=device)[:, None]
    parts = []
    for size, offset in layout:
        cols = torch.arange(size, device=device)[None]
        parts.append(cols <= rows + (size if offset is None else offset))
    return _Mask.of(torch.cat(parts, dim=1).repeat(group, 1))
