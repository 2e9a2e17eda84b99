"""Two-stage attention equals one softmax over the union of keys."""

from __future__ import annotations

import pytest
import torch

from qllm_core.attention import KeySegment, two_stage_attention


def _union_reference(q_local, local, q_global, segments, scaling):
    """One softmax over all keys at once (float64), the definition the merge must meet."""
    logits, values = [], []
    for q, seg in [(q_local, local), *[(q_global, s) for s in segments]]:
        part = torch.einsum("hgnd,hmd->hgnm", q.double(), seg.keys.double()) * scaling
        if seg.mask is not None:
            part = part.masked_fill(~seg.mask, float("-inf"))
        logits.append(part)
        values.append(seg.values.double())
    probs = torch.softmax(torch.cat(logits, dim=-1), dim=-1)
    out = torch.einsum("hgnm,hmd->hgnd", probs, torch.cat(values, dim=1))
    local_probs = probs[..., : local.keys.shape[1]].sum(dim=(1, 2))
    return out, local_probs


@pytest.mark.parametrize(
    "n, m_local, m_blocks, m_rem",
    [(1, 27, 0, 0), (27, 61, 48, 13), (61, 113, 32, 0), (16, 16, 0, 5)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_equals_union_softmax(n, m_local, m_blocks, m_rem, dtype):
    gen = torch.Generator().manual_seed(n * 1000 + m_local)
    heads, group, dim = 3, 2, 16

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    q_local, q_global = rand(heads, group, n, dim), rand(heads, group, n, dim)
    # a causal band as local mask (each query sees at least itself: the diagonal at the end)
    rows = torch.arange(n)[:, None] + (m_local - n)
    cols = torch.arange(m_local)[None]
    local = KeySegment(
        rand(heads, m_local, dim), rand(heads, m_local, dim), (cols <= rows) & (cols > rows - 20)
    )
    segments = [
        KeySegment(rand(heads, 4, dim), rand(heads, 4, dim)),
        KeySegment(rand(heads, m_blocks, dim), rand(heads, m_blocks, dim)),
        KeySegment(
            rand(heads, m_rem, dim),
            rand(heads, m_rem, dim),
            torch.rand(n, m_rem, generator=gen) > 0.5,
        ),
    ]
    out, local_probs = two_stage_attention(q_local, local, q_global, segments, 0.25)
    ref_out, ref_probs = _union_reference(q_local, local, q_global, segments, 0.25)

    # tolerance: twice the reference's own rounding error in `dtype`
    ref_rounded = ref_out.to(dtype).double()
    tol = max(2 * (ref_rounded - ref_out).abs().max().item(), 1e-6)
    assert out.dtype == dtype
    assert (out.double() - ref_out).abs().max().item() <= tol
    torch.testing.assert_close(local_probs.double(), ref_probs, atol=1e-5, rtol=1e-4)


def test_global_keys_change_the_output():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 2, 8, generator=gen)
    local = KeySegment(
        torch.randn(1, 2, 8, generator=gen),
        torch.randn(1, 2, 8, generator=gen),
        torch.tensor([[True, False], [True, True]]),
    )
    glob = KeySegment(q[0, 0][None] * 3, torch.full((1, 2, 8), 100.0))
    alone, probs_alone = two_stage_attention(q, local, q, [], 1.0)
    merged, probs_merged = two_stage_attention(q, local, q, [glob], 1.0)
    assert merged.mean() > alone.mean() + 10  # the strongly matching global values dominate
    assert probs_merged.sum() < probs_alone.sum()  # local keys share the softmax with them
    torch.testing.assert_close(probs_alone.sum(), torch.tensor(2.0))  # 2 queries, 1 each
