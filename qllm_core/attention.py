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


def two_stage_attention(q_local: torch.Tensor, local: KeySegment, q_global: torch.Tensor,
                        global_segments: Sequence[KeySegment],
                        scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
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
    logits = [_logits(q_local, local, scaling)]
    logits += [_logits(q_global, seg, scaling) for seg in global_segments if seg.keys.shape[1]]
    values = [local.values] + [seg.values for seg in global_segments if seg.keys.shape[1]]
    row_max = logits[0].amax(dim=-1, keepdim=True)
    for part in logits[1:]:
        row_max = torch.maximum(row_max, part.amax(dim=-1, keepdim=True))
    denom = torch.zeros_like(row_max)
    out = torch.zeros(*q_local.shape, dtype=torch.float32, device=q_local.device)
    for part, vals in zip(logits, values, strict=True):
        probs = part.sub_(row_max).exp_()  # in place: logits[i] now holds probabilities
        denom += probs.sum(dim=-1, keepdim=True)
        out += (probs.flatten(1, 2) @ vals.float()).view_as(out)
    local_probs = (logits[0] / denom).sum(dim=(1, 2))
    return (out / denom).to(local.values.dtype), local_probs


def _logits(q: torch.Tensor, seg: KeySegment, scaling: float) -> torch.Tensor:
    """(H, G, n, D) x (H, m, D) -> (H, G, n, m) float32, masked keys at -inf."""
    kv_heads, group, n, _ = q.shape
    logits = (q.float().flatten(1, 2) @ seg.keys.float().transpose(1, 2)).mul_(scaling)
    logits = logits.view(kv_heads, group, n, -1)
    if seg.mask is not None:
        logits.masked_fill_(~seg.mask, float("-inf"))
    return logits
