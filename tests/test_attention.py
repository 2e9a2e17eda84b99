"""Two-stage attention equals one softmax over the union of keys."""

from __future__ import annotations

import pytest
import torch

from qllm_core.kernels import attention
from qllm_core.kernels.attention import KeySegment, LocalWindow, two_stage_attention


def _union_reference(q_local, local, q_global, segments, scaling):
    """One softmax over all keys at once (float64), the definition the merge must meet.

    Returns the output, each local key's probability summed, and ``probs @ |values|``
    (what rounding the probabilities can move each output by, per unit of relative error).
    """
    n, m = q_local.shape[2], local.keys.shape[1]
    own = torch.arange(n)[:, None] + (m - n)
    cols = torch.arange(m)[None]
    parts = [(q_local, local.keys, local.values, (cols <= own) & (cols > own - local.window))]
    for seg in segments:
        cols = torch.arange(seg.keys.shape[1])[None]
        offset = seg.keys.shape[1] if seg.causal_offset is None else seg.causal_offset
        parts.append((q_global, seg.keys, seg.values, cols <= torch.arange(n)[:, None] + offset))
    logits = [
        torch.einsum("hgnd,hmd->hgnm", q.double(), keys.double())
        .mul(scaling)
        .masked_fill(~mask, float("-inf"))
        for q, keys, _, mask in parts
    ]
    probs = torch.softmax(torch.cat(logits, dim=-1), dim=-1)
    values = torch.cat([v.double() for _, _, v, _ in parts], dim=1)
    out = torch.einsum("hgnm,hmd->hgnd", probs, values)
    weighted = torch.einsum("hgnm,hmd->hgnd", probs, values.abs())
    return out, probs[..., :m].sum(dim=(1, 2)), weighted


def _check(
    n,
    m_local,
    window,
    m_blocks,
    m_rem,
    rem_offset,
    dtype,
    seed=0,
    attend=two_stage_attention,
    dim=16,
    rounded_probs=False,
):
    """``rounded_probs``: ``attend`` rounds the probabilities to ``dtype`` before weighing the
    values (the Triton kernels do, as flash attention does), which may move each output by up
    to ``eps / 2 * sum_j p_j |value_j|`` more."""
    gen = torch.Generator().manual_seed(seed)
    heads, group = 3, 2

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    q_local, q_global = rand(heads, group, n, dim), rand(heads, group, n, dim)
    local = LocalWindow(rand(heads, m_local, dim), rand(heads, m_local, dim), window)
    segments = [
        KeySegment(rand(heads, 4, dim), rand(heads, 4, dim)),
        KeySegment(rand(heads, m_blocks, dim), rand(heads, m_blocks, dim)),
        KeySegment(rand(heads, m_rem, dim), rand(heads, m_rem, dim), rem_offset),
    ]
    scaling = dim**-0.5  # as the models scale
    out, local_probs = attend(q_local, local, q_global, segments, scaling)
    ref_out, ref_probs, weighted = _union_reference(q_local, local, q_global, segments, scaling)

    # tolerance: twice the reference's own rounding error in `dtype`
    ref_rounded = ref_out.to(dtype).double()
    tol = max(2 * (ref_rounded - ref_out).abs().max().item(), 1e-6)
    if rounded_probs and dtype.itemsize < 4:  # each output's own bound
        tol = tol + torch.finfo(dtype).eps / 2 * weighted
    assert out.dtype == dtype
    assert ((out.double() - ref_out).abs() <= tol).all()
    torch.testing.assert_close(local_probs.double(), ref_probs, atol=1e-5, rtol=1e-4)


CASES = pytest.mark.parametrize(
    "n, m_local, window, m_blocks, m_rem, rem_offset",
    [
        (1, 27, 20, 0, 0, None),  # decoding
        (1, 20, 20, 48, 13, 5),  # decoding: a prefix of the remainder seen
        (1, 8, 20, 16, 6, -1),  # decoding: no remainder key seen yet
        (27, 61, 20, 48, 13, -5),  # odd sizes, remainder seen by later queries only
        (61, 113, 200, 32, 0, None),  # window larger than the keys held
        (16, 16, 20, 0, 5, 2),  # start of an input
        (128, 40 + 127, 40, 64, 7, 0),  # banded in chunks: m == window + n - 1
        (256, 100 + 255, 100, 0, 30, -20),
    ],
)


@CASES
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_equals_union_softmax(n, m_local, window, m_blocks, m_rem, rem_offset, dtype):
    _check(n, m_local, window, m_blocks, m_rem, rem_offset, dtype, seed=n * 1000 + m_local)


def test_dense_global_stage_equals_union_softmax(monkeypatch):
    """The global stage off the CPU kernel (the path used on GPUs) meets the same definition."""
    monkeypatch.setattr(attention, "_FLASH_CPU", None)
    _check(128, 40 + 127, 40, 64, 7, 0, torch.float32)
    _check(27, 61, 20, 48, 13, -30, torch.float32)  # remainder seen by no query


def test_banded_local_stage_is_used_in_steady_state():
    """The chunked band computes fewer logits than the dense one (and test above: same result)."""
    local = LocalWindow(torch.zeros(1, 100 + 255, 8), torch.zeros(1, 100 + 255, 8), 100)
    band = attention._Band.of(local, 256)
    assert band.chunk == attention.LOCAL_CHUNK
    assert band.chunks * band.chunk * band.width < 256 * (100 + 255)


def test_global_keys_change_the_output():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 2, 8, generator=gen)
    local = LocalWindow(torch.randn(1, 2, 8, generator=gen), torch.randn(1, 2, 8, generator=gen), 2)
    glob = KeySegment(q[0, 0][None] * 3, torch.full((1, 2, 8), 100.0))
    alone, probs_alone = two_stage_attention(q, local, q, [], 1.0)
    merged, probs_merged = two_stage_attention(q, local, q, [glob], 1.0)
    assert merged.mean() > alone.mean() + 10  # the strongly matching global values dominate
    assert probs_merged.sum() < probs_alone.sum()  # local keys share the softmax with them
    torch.testing.assert_close(probs_alone.sum(), torch.tensor(2.0))  # 2 queries, 1 each
