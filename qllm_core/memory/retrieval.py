"""Representative keys, the question vector and block scoring (pure tensor functions)."""

from __future__ import annotations

import torch

from ..config import RANKINGS


def representative_keys(
    keys: torch.Tensor, scores: torch.Tensor, block_size: int, repr_topk: int
) -> torch.Tensor:
    """Per block and head, the mean key of the ``repr_topk`` most attended tokens.

    keys: (H, n * block_size, D), ``n`` consecutive blocks; scores: (H, n * block_size)
    accumulated local attention. Returns (n, H, D).
    """
    keys = keys.unflatten(1, (-1, block_size))
    top = scores.unflatten(1, (-1, block_size)).topk(min(repr_topk, block_size), dim=-1).indices
    chosen = keys.gather(2, top[..., None].expand(-1, -1, -1, keys.shape[-1]))
    return chosen.mean(dim=2).transpose(0, 1)


def question_vector(queries: torch.Tensor, scores: torch.Tensor, repr_topk: int) -> torch.Tensor:
    """The question vector of one layer.

    Per query head, the mean of the ``repr_topk`` question queries whose tokens received the
    most local attention; heads of one group are then averaged so the vector lives in key
    space, like the representatives.

    queries: (H, G, n_question, D) question tokens' queries, rotated for the global stage;
    scores: (H, n_question) accumulated local attention of the question tokens.
    Returns (H, D).
    """
    kv_heads, group, count, dim = queries.shape
    top = scores.topk(min(repr_topk, count), dim=-1).indices  # (H, k)
    index = top[:, None, :, None].expand(kv_heads, group, -1, dim)
    return queries.gather(2, index).mean(dim=(1, 2))


def current_vector(queries: torch.Tensor) -> torch.Tensor:
    """Mean query of an execution block, in key space: (H, G, n, D) -> (H, D)."""
    return queries.mean(dim=(1, 2))


def select_blocks(
    representatives: torch.Tensor,
    current: torch.Tensor,
    question: torch.Tensor | None,
    question_weight: float,
    topk: int,
) -> list[int]:
    """Ids of the ``topk`` blocks with the highest ``current.repr + beta * question.repr``.

    representatives: (num_blocks, H, D); current, question: (H, D).
    Returns block ids in ascending order (memory order).
    """
    target = current
    if question is not None and question_weight:
        target = current + question_weight * question
    scores = torch.einsum("bhd,hd->b", representatives.float(), target.float())
    chosen = scores.topk(min(topk, scores.shape[0])).indices
    return sorted(chosen.tolist())


def block_log_mass(queries: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
    """Log of the unnormalized attention each query gives each block (logsumexp of its logits).

    queries: (H, G, n, D) rotated for the global stage; keys: (B, H, S, D), ``B`` blocks of
    ``S`` keys at position 0. Returns (H, G, n, B) in float32; a softmax over the last
    dimension gives the share of each query's attention over these blocks that each gets.
    """
    logits = torch.einsum("hgnd,bhsd->hgnbs", queries.float(), keys.float()) * scaling
    return logits.logsumexp(dim=-1)


def block_relevance(log_mass: torch.Tensor, ranking: str = "mean") -> torch.Tensor:
    """One layer's score per block from its question's attention: (H, G, n, B) -> (B,).

    ``P[h, g, i, b]`` = softmax over blocks of ``log_mass``: the share of query ``i``'s
    attention (query head ``g`` of KV head ``h``) that block ``b`` draws. Then:

    - ``mean``: ``mean_{h,g,i} P`` (sums to 1). Dominated by what every query attends to,
      so the ranking follows the document (its start, headings) more than the question;
    - ``peak``: ``max_{h,g,i} P``: the largest share any head and question token gives the
      block, so one content word's focused attention outranks the diffuse mass that
      function words spread over generic blocks;
    - ``token_peak``: ``mean_i max_{h,g} P``: per question token the most focused head,
      averaged over the question's tokens.
    """
    shares = log_mass.softmax(dim=-1)
    if ranking == "mean":
        return shares.mean(dim=(0, 1, 2))
    if ranking == "peak":
        return shares.flatten(0, 2).amax(dim=0)
    if ranking == "token_peak":
        return shares.amax(dim=(0, 1)).mean(dim=0)
    raise ValueError(f"unknown ranking {ranking!r}; choose one of {RANKINGS}")


def block_scores(
    per_layer: torch.Tensor,
    neighbours: float = 0.0,
    layers: tuple[int, ...] | None = None,
    layer_ids: list[int] | None = None,
) -> torch.Tensor:
    """The score the re-read and the evidence rank blocks by: (L, B) -> (B,).

    ``per_layer``: each layer's :func:`block_relevance`, row ``r`` for model layer
    ``layer_ids[r]`` (default: ``r``). ``s_b = mean_{l in layers} per_layer[l, b]`` over the
    rows of ``layers`` (``None``: all), then :func:`with_neighbours`; empty (0,) where
    nothing was ranked or none of ``layers`` was.
    """
    if layers is not None and per_layer.numel():
        ids = layer_ids if layer_ids is not None else list(range(per_layer.shape[0]))
        per_layer = per_layer[[row for row, layer in enumerate(ids) if layer in layers]]
    if per_layer.numel() == 0:
        return per_layer.new_zeros(0)
    return with_neighbours(per_layer.mean(dim=0), neighbours)


def with_neighbours(scores: torch.Tensor, weight: float) -> torch.Tensor:
    """``s_b + weight * (s_{b-1} + s_{b+1})`` (a missing neighbour counts 0): (B,) -> (B,).

    A passage cut by a block boundary then ranks as a whole: the block-level form of the
    convolution over token scores of InfiniRetri (arXiv 2502.12962). ``weight`` 0 returns
    ``scores`` unchanged.
    """
    if not weight:
        return scores
    out = scores.clone()
    out[1:] += weight * scores[:-1]
    out[:-1] += weight * scores[1:]
    return out


def question_shares(representatives: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
    """Each block's share of the question's attention over the representatives of one layer.

    Per head, a softmax over the blocks of ``question . repr / sqrt(D)``, then averaged over
    heads. representatives: (num_blocks, H, D); question: (H, D). Returns (num_blocks,)
    float32, summing to 1.
    """
    logits = torch.einsum("bhd,hd->hb", representatives.float(), question.float())
    return (logits / representatives.shape[-1] ** 0.5).softmax(dim=-1).mean(dim=0)
