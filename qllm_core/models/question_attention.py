"""Evidence for a read with the model's own attention: the question's attention, recorded.

Mode ``full`` keeps no memory blocks to rank, yet the evidence should follow the question
there as after a Q-LLM read. While the prompt chunk holding the final question is read,
the model runs through :func:`ranking_attention` (registered beside the native attention
in transformers' ``AttentionInterface``): it returns the native attention's output
unchanged and records, per layer, how the final question's queries (rotated at their true
positions, as the model attends) spread their attention over the document's tokens in
blocks of ``block_size``. Those blocks are then scored exactly as the re-read scores memory
blocks (:func:`~qllm_core.memory.retrieval.block_relevance`).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..config import QLLMConfig
from ..memory.retrieval import block_relevance, block_scores

RANKING_NAME = "quickllama-question-attention"
"""Prefix of :func:`ranking_attention`'s names in transformers' registries (one per native
attention, each with that attention's mask)."""
RECORDER_KWARG = "qllm_question_attention"
"""Keyword argument of ``model(...)`` that carries the :class:`QuestionAttention`."""


class QuestionAttention:
    """The final question's attention over the document, per layer, in blocks.

    ``rank_span`` and ``document_span`` are prompt token spans; block ``b`` holds the
    document's tokens ``[doc_start + b * block_size, doc_start + (b + 1) * block_size)``
    (the last may be shorter). ``native``: the attention implementation whose output
    :func:`ranking_attention` returns.
    """

    def __init__(
        self,
        rank_span: tuple[int, int],
        document_span: tuple[int, int],
        block_size: int,
        native: str,
    ) -> None:
        self.rank_span, self.document_span = rank_span, document_span
        self.block_size, self.native = block_size, native
        self.implementation = f"{RANKING_NAME}-{native}"
        """The registered name the model runs under while it reads the rank span."""
        self.start = 0
        """Prompt position of the chunk being read (set by the forward step)."""
        self._log_mass: dict[int, list[torch.Tensor]] = {}

    def covers(self, start: int, count: int) -> bool:
        """Whether tokens ``[start, start + count)`` hold part of the rank span."""
        return start < self.rank_span[1] and self.rank_span[0] < start + count

    def record(
        self, layer_idx: int, query: torch.Tensor, key: torch.Tensor, scaling: float
    ) -> None:
        """Keep the rank span's log attention mass per document block.

        query: (1, heads, q_len, D) for prompt positions ``[start, start + q_len)``; key:
        (1, kv_heads, k_len, D), every key read so far (the cache's). A layer whose cache
        keeps less than the whole prompt (a sliding window) is not recorded.
        """
        if key.shape[2] != self.start + query.shape[2]:
            return
        lo = max(self.rank_span[0], self.start) - self.start
        hi = min(self.rank_span[1], self.start + query.shape[2]) - self.start
        doc_start, doc_end = self.document_span
        if hi <= lo or doc_end <= doc_start:
            return
        kv_heads = key.shape[1]
        queries = query[0, :, lo:hi].unflatten(0, (kv_heads, -1)).float()  # (H, G, n, D)
        keys = key[0, :, doc_start:doc_end].float()  # (H, T, D)
        logits = torch.einsum("hgnd,htd->hgnt", queries, keys) * scaling
        pad = -logits.shape[-1] % self.block_size
        logits = nn.functional.pad(logits, (0, pad), value=float("-inf"))
        log_mass = logits.unflatten(-1, (-1, self.block_size)).logsumexp(dim=-1)
        self._log_mass.setdefault(layer_idx, []).append(log_mass.cpu())

    def relevance(self, config: QLLMConfig) -> torch.Tensor:
        """Per block, the score the re-read ranks by (:func:`block_scores`): (num_blocks,)."""
        ids = sorted(self._log_mass)
        rows = [
            block_relevance(torch.cat(self._log_mass[i], dim=2), config.reread_ranking) for i in ids
        ]
        per_layer = torch.stack(rows) if rows else torch.zeros(0, 0)
        return block_scores(per_layer, config.reread_neighbours, config.reread_layers, ids)


def ranking_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """The native attention's result, recording the question's attention on the way."""
    recorder: QuestionAttention = kwargs.pop(RECORDER_KWARG)
    out = ALL_ATTENTION_FUNCTIONS[recorder.native](
        module, query, key, value, attention_mask, scaling=scaling, **kwargs
    )
    layer_idx = cast(int, module.layer_idx)
    recorder.record(layer_idx, query, key, scaling or query.shape[-1] ** -0.5)
    return out


def register(native: str) -> bool:
    """Register :func:`ranking_attention` over ``native``; False where it cannot wrap it.

    The eager attention lives in each modeling file, not in the registry, so a model
    running eagerly gives its ``full`` answers no evidence.
    """
    if native not in ALL_ATTENTION_FUNCTIONS or native not in ALL_MASK_ATTENTION_FUNCTIONS:
        return False
    name = f"{RANKING_NAME}-{native}"
    AttentionInterface.register(name, ranking_attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[native])
    return True
