"""One interface over what a read leaves: the state a question reads on from.

A read in a Q-LLM mode leaves a :class:`~qllm_core.memory.request.RequestMemory` (init
tokens, memory blocks, the local window, per layer); a read with the model's own attention
(mode ``full``) leaves transformers' KV cache, wrapped as :class:`KVCacheState`. Both are
a :class:`ReadState`: forked per question (copy on write), measured, saved layer by layer,
and stepped by the :class:`~qllm_core.models.forward.Forward` each makes. Which one a mode
uses is the mode table's ``block_memory``; nothing outside this module tells them apart.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from transformers import DynamicCache, PretrainedConfig, PreTrainedModel

from ..config import QLLMConfig
from ..kernels.rope import RotaryTable
from ..models.forward import Forward, NativeForward
from ..models.patching import AttachedModel
from ..modes import mode_spec
from .request import RequestMemory, RequestPlan

if TYPE_CHECKING:
    from ..models.question_attention import QuestionAttention


class ReadState(Protocol):
    """What a read leaves, for any mode."""

    def fork(self, plan: RequestPlan) -> ReadState:
        """A copy-on-write view for one question (``plan``: its spans); the state is kept."""

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors it holds."""

    def layer_states(self) -> list[dict[str, torch.Tensor]]:
        """Each layer's tensors on the host, in layer order (for saving)."""

    def forward(
        self,
        model: PreTrainedModel,
        attached: AttachedModel,
        recorder: QuestionAttention | None = None,
    ) -> Forward:
        """A forward step that reads on from this state.

        ``recorder``: records the question's attention where the state's attention is the
        model's own.
        """


class KVCacheState:
    """transformers' KV cache after a read with the model's own attention."""

    def __init__(self, cache: DynamicCache) -> None:
        self.cache = cache

    def fork(self, plan: RequestPlan) -> KVCacheState:
        """A cache sharing this one's tensors (``plan`` is not needed: no blocks to rank).

        transformers' ``DynamicLayer.update`` concatenates into new tensors, so appending
        to the fork never changes this cache.
        """
        fork = copy.copy(self.cache)
        fork.layers = [copy.copy(layer) for layer in self.cache.layers]
        return KVCacheState(fork)

    @property
    def nbytes(self) -> int:
        """Bytes of the cached keys and values."""
        return sum(k.nbytes + v.nbytes for k, v in self._pairs())

    def layer_states(self) -> list[dict[str, torch.Tensor]]:
        """Per layer ``keys`` and ``values``: (1, kv_heads, tokens, head_dim) each."""
        return [
            {"keys": keys.cpu().contiguous(), "values": values.cpu().contiguous()}
            for keys, values in self._pairs()
        ]

    def forward(
        self,
        model: PreTrainedModel,
        attached: AttachedModel,
        recorder: QuestionAttention | None = None,
    ) -> NativeForward:
        """A forward step with the model's own attention, appending to this cache."""
        return NativeForward(model, cache=self.cache, recorder=recorder)

    @classmethod
    def restore(
        cls,
        layer_states: list[dict[str, torch.Tensor]],
        model_config: PretrainedConfig,
        device: torch.device,
        dtype: torch.dtype,
    ) -> KVCacheState:
        """A state from saved :meth:`layer_states`, on ``device`` in ``dtype``."""
        cache = DynamicCache(config=model_config)
        for index, layer in enumerate(layer_states):
            cache.update(layer["keys"].to(device, dtype), layer["values"].to(device, dtype), index)
        return cls(cache)

    def _pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pairs = []
        for layer in self.cache.layers:
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            assert isinstance(keys, torch.Tensor) and isinstance(values, torch.Tensor)
            pairs.append((keys, values))
        return pairs


@dataclass(frozen=True)
class StateContext:
    """Where an engine's states live: its model's config, RoPE table, device and dtype."""

    model_config: PretrainedConfig
    rope: RotaryTable
    device: torch.device
    dtype: torch.dtype


def new_state(config: QLLMConfig, plan: RequestPlan, context: StateContext) -> ReadState:
    """An empty state for a read in ``config.mode`` (a concrete mode) with ``plan``."""
    if mode_spec(config.mode).block_memory:
        return RequestMemory(
            config=config, plan=plan, rope=context.rope, device=context.device, dtype=context.dtype
        )
    return KVCacheState(DynamicCache(config=context.model_config))


def restore_state(
    config: QLLMConfig,
    layer_states: list[dict[str, torch.Tensor]],
    tokens: int,
    context: StateContext,
) -> ReadState:
    """The state :meth:`ReadState.layer_states` saved: ``tokens`` read in ``config.mode``."""
    if mode_spec(config.mode).block_memory:
        plan = RequestPlan(None, record_from=tokens)
        memory = RequestMemory(
            config=config, plan=plan, rope=context.rope, device=context.device, dtype=context.dtype
        )
        return memory.restore(layer_states)
    return KVCacheState.restore(layer_states, context.model_config, context.device, context.dtype)
