"""One forward pass of the model over new tokens, through the engine or as shipped.

Each call holds the model's lock (:func:`~qllm_core.patching.model_lock`) for that step
only, in inference mode: a request that is paused (a stream not iterated) or abandoned
holds nothing, and requests of any engines sharing the model interleave step by step.
"""

from __future__ import annotations

import inspect
from typing import Protocol

import torch
from transformers import DynamicCache, PreTrainedModel

from .layer_memory import RequestMemory
from .patching import MEMORY_KWARG, AttachedModel, model_lock


class Forward(Protocol):
    """Feeds new tokens to the model; returns the last position's logits, shape (vocab,)."""

    def __call__(self, ids: list[int]) -> torch.Tensor:
        """Run the model over ``ids`` (appended to everything fed so far)."""


class QLLMForward:
    """The engine's attention over a request's :class:`RequestMemory` (modes other than full)."""

    def __init__(
        self, model: PreTrainedModel, attached: AttachedModel, memory: RequestMemory
    ) -> None:
        self.model, self.attached, self.memory = model, attached, memory

    def __call__(self, ids: list[int]) -> torch.Tensor:
        """Run the model over ``ids`` with the engine's attention."""
        input_ids = torch.tensor([ids], device=self.memory.device)
        with self.attached.qllm(), torch.inference_mode():
            out = self.model(
                input_ids=input_ids,
                use_cache=False,
                logits_to_keep=1,
                **{MEMORY_KWARG: self.memory},
            )
        return out.logits[0, -1]


class NativeForward:
    """The model's own attention with transformers' DynamicCache (mode ``full``)."""

    def __init__(self, model: PreTrainedModel, cache: DynamicCache | None = None) -> None:
        """``cache``: keys and values of earlier tokens to read on from (default: none)."""
        self.model = model
        self.cache = DynamicCache(config=model.config) if cache is None else cache
        self._lock = model_lock(model)
        # transformers 5.24 renamed the argument (the old name warns, and goes in 5.40)
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def __call__(self, ids: list[int]) -> torch.Tensor:
        """Run the model over ``ids`` with its own attention and cache."""
        input_ids = torch.tensor([ids], device=self.model.device)
        with self._lock, torch.inference_mode():
            out = self.model(
                input_ids=input_ids,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_arg: self.cache},
            )
        return out.logits[0, -1]
