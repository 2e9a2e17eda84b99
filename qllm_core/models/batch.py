"""Decode steps of many requests as one forward pass (the batching scheduler's step).

On a GPU a single-token step is bound by reading the weights, not by arithmetic: the
projections and the MLP of B requests cost about what one costs (on a small CPU the
arithmetic of B tokens shows, and the gain is smaller: BENCHMARKS.md). Each request keeps its own
attention state, a *row*: its Q-LLM :class:`~qllm_core.memory.request.RequestMemory`, or
a :class:`CacheRow` over the KV cache its ``full`` read or re-read left. The step runs the
model once over the B new tokens with the engine's attention (RoPE switched off, as for a
Q-LLM read); at every layer each row attends for its own token over its own keys, so the
rows never see each other and need no padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch.nn import functional
from transformers import DynamicCache, PreTrainedModel

from ..kernels.rope import RotaryTable, rotate
from .patching import MEMORY_KWARG, AttachedModel


class Row(Protocol):
    """One request's attention state in a batched step."""

    def attend(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        """q: (heads, 1, D); k, v: (kv_heads, 1, D), unrotated. Returns (heads, 1, D)."""


class CacheRow:
    """A request decoded with the model's own attention: its KV cache, with room to grow.

    The cache's keys are already rotated (the model wrote them); each new token's query
    and key are rotated here at the token's true position, the key and value written in
    place, and the query attends over every key so far with the model's scaled
    dot-product attention, as the model's own attention does for one new token.
    """

    def __init__(self, cache: DynamicCache, rope: RotaryTable, new_tokens: int) -> None:
        """``new_tokens``: the most tokens this row will be fed."""
        self._rope = rope
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._filled: list[int] = []
        for layer in cache.layers:
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            assert isinstance(keys, torch.Tensor) and isinstance(values, torch.Tensor)
            self._keys.append(_with_room(keys[0], new_tokens))
            self._values.append(_with_room(values[0], new_tokens))
            self._filled.append(keys.shape[2])

    def attend(
        self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float
    ) -> torch.Tensor:
        """See :class:`Row`."""
        n = self._filled[layer_idx]
        cos, sin = self._rope.at(n)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        keys, values = self._keys[layer_idx], self._values[layer_idx]
        keys[:, n : n + 1] = k
        values[:, n : n + 1] = v
        self._filled[layer_idx] = n + 1
        out = functional.scaled_dot_product_attention(
            q[None],
            keys[None, :, : n + 1],
            values[None, :, : n + 1],
            scale=scaling,
            enable_gqa=True,
        )
        return out[0]


def _with_room(x: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """``x`` (kv_heads, tokens, D) copied into a buffer with ``new_tokens`` more places."""
    heads, tokens, dim = x.shape
    buffer = x.new_empty(heads, tokens + new_tokens, dim)
    buffer[:, :tokens] = x
    return buffer


def batch_step(
    model: PreTrainedModel, attached: AttachedModel, rows: Sequence[Row], tokens: Sequence[int]
) -> torch.Tensor:
    """Feed ``tokens[i]`` to ``rows[i]``, all in one forward pass; logits (B, vocab)."""
    input_ids = torch.tensor([[token] for token in tokens], device=model.device)
    with attached.qllm(), torch.inference_mode():
        out = model(
            input_ids=input_ids, use_cache=False, logits_to_keep=1, **{MEMORY_KWARG: list(rows)}
        )
    return out.logits[:, -1]
