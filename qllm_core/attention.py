"""Two-stage attention merged exactly: one softmax over the union of local and global keys.

This is the torch reference path; it runs on CPU and GPU. Shapes use ``kv_heads`` (H),
``group`` (G = query heads per key head), ``n`` queries, ``m`` keys and ``head_dim`` (D).
Each stage may have several key segments (init tokens, retrieved blocks, remainder);
they are never concatenated: every segment's logits join one shared log-sum-exp.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KeySegment:
    """Keys (rotated for their stage) and values, with an optional mask.

    keys, values: (H, m, D); mask: (n, m) bool, True where a query may attend, or
    ``None`` when every query attends every key.
    """

    keys: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor | None = None


def two_stage_attention(
    q_local: torch.Tensor,
    local: KeySegment,
    q_global: torch.Tensor,
    global_segments: Sequence[KeySegment],
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attend to the local window and the global segments with one shared softmax.

    Args:
        q_local: (H, G, n, D) queries rotated for the local stage.
        local: the local window; every query must be allowed at least one key (itself).
        q_global: (H, G, n, D) queries rotated for the global stage.
        global_segments: init tokens, retrieved blocks, remainder (any may be empty).
        scaling: softmax scale (usually ``D ** -0.5``).

    Returns:
        out: (H, G, n, D), in the dtype of the local values.
        local_probs: (H, m_local) float32: each local key's attention probability summed
            over the group's heads and the queries (feeds the representative keys).
    """
    kv_heads, group, n, dim = q_local.shape
    segments = [seg for seg in global_segments if seg.keys.shape[1]]
    # Each stage's logits are computed with its own queries; laid side by side they form
    # the logits over the union of keys, so one softmax merges the stages exactly.
    logits = torch.cat(
        [_logits(q_local * scaling, local, group)]
        + [_logits(q_global * scaling, seg, group) for seg in segments],
        dim=-1,
    )
    probs = logits.softmax(dim=-1)  # (H, G*n, m_local + m_global)
    values = torch.cat([local.values] + [seg.values for seg in segments], dim=1)
    out = (probs @ values.float()).view(kv_heads, group, n, dim)
    local_probs = probs[..., : local.keys.shape[1]].sum(dim=1)
    return out.to(local.values.dtype), local_probs


def _logits(q: torch.Tensor, seg: KeySegment, group: int) -> torch.Tensor:
    """(H, G, n, D) x (H, m, D) -> (H, G*n, m) float32, masked keys at -inf (one pass)."""
    q = q.flatten(1, 2).float()
    keys = seg.keys.float().transpose(1, 2)
    if seg.mask is None:
        return q @ keys
    bias = torch.zeros(seg.mask.shape, dtype=torch.float32, device=q.device)
    bias.masked_fill_(~seg.mask, float("-inf"))
    return torch.baddbmm(bias.repeat(group, 1), q, keys)
