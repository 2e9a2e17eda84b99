"""The one seam between the engine and transformers.

``attach(model)`` registers the Q-LLM attention function in transformers'
``AttentionInterface`` and swaps the model's rotary module for one that can be
switched to the identity, so that keys reach the attention function unrotated
(Q-LLM re-positions memory itself). ``AttachedModel.qllm()`` routes a forward
pass through the engine; outside it the model runs exactly as shipped. No
``forward`` method is replaced and no modeling file is copied.

The attachment belongs to the model, not to an engine: every engine on one model shares
it, and every forward step through an engine runs under the model's :func:`model_lock`,
so steps of different engines and requests interleave but never overlap. Each request's
memory rides with its own ``model(...)`` call (:data:`MEMORY_KWARG`).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel

from ..errors import UnsupportedModelError
from . import question_attention
from .family import family_of

ATTENTION_NAME = "quickllama"
"""Name under which the engine's attention is registered in transformers."""

MEMORY_KWARG = "qllm_memory"
"""Keyword argument of ``model(...)`` that carries the request's memory to the attention."""


class SwitchableRotary(nn.Module):
    """Wraps a rotary module; returns cos = 1, sin = 0 (RoPE as identity) while ``identity``."""

    def __init__(self, rotary: nn.Module) -> None:
        super().__init__()
        self.rotary = rotary
        self.identity = False

    def forward(
        self, x: torch.Tensor, position_ids: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)``, each ``(batch, seq, rot_dim)``, like the wrapped module."""
        cos, sin = self.rotary(x, position_ids, *args, **kwargs)
        if self.identity:  # broadcast constants: no cos/sin tensors to read in every layer
            return cos.new_ones(()).expand_as(cos), sin.new_zeros(()).expand_as(sin)
        return cos, sin


def _qllm_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention function for transformers: hands the layer's q, k, v to the request's memory.

    query: (B, heads, q_len, head_dim); key, value: (B, kv_heads, q_len, head_dim),
    unrotated. The memory keyword holds one request's memory (B = 1) or a list of B rows
    (:mod:`~qllm_core.models.batch`), each attending for its own batch entry. Returns
    ``(output (B, q_len, heads, head_dim), None)``.
    """
    memory = kwargs.get(MEMORY_KWARG)
    if memory is None:
        raise RuntimeError(
            f"the {ATTENTION_NAME!r} attention was called without a Q-LLM memory; run the model "
            "through QLLMEngine, or call AttachedModel.detach() to restore the model"
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    rows = memory if isinstance(memory, list) else [memory]
    outs = [
        row.attend(module.layer_idx, query[i], key[i], value[i], scaling)
        for i, row in enumerate(rows)
    ]
    return torch.stack(outs).transpose(1, 2), None


def check_model(model: PreTrainedModel) -> None:
    """Raise :class:`UnsupportedModelError` unless the engine can drive ``model``."""
    config = model.config
    if getattr(config, "is_encoder_decoder", False) or not getattr(config, "is_decoder", True):
        raise UnsupportedModelError(
            f"{type(model).__name__} is not a decoder-only causal LM; load one with "
            "AutoModelForCausalLM"
        )
    if (
        not callable(getattr(model, "get_output_embeddings", None))
        or model.get_output_embeddings() is None
    ):
        raise UnsupportedModelError(
            f"{type(model).__name__} has no language-model head; load it with AutoModelForCausalLM"
        )
    family_of(config).base_model(model)
    if getattr(config, "layer_types", None) and any(
        t != "full_attention" for t in config.layer_types
    ):
        raise UnsupportedModelError(
            f"{type(model).__name__} mixes attention types {sorted(set(config.layer_types))}; "
            "the engine supports models whose layers all use full attention"
        )


@dataclass
class _Attachment:
    """What one model's attachment shares between all the engines on it."""

    rotary: SwitchableRotary
    native_attention: str


_ATTACHMENTS: weakref.WeakKeyDictionary[nn.Module, _Attachment] = weakref.WeakKeyDictionary()
_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def model_lock(model: nn.Module) -> threading.Lock:
    """The lock every engine step on ``model`` holds (one per model, shared by engines)."""
    with _REGISTRY_LOCK:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.Lock()
        return lock


class AttachedModel:
    """A model with the engine attached; ``qllm()`` switches it to the engine's attention.

    Any number of ``AttachedModel`` (one per engine) may wrap one model: they share one
    attachment and one :func:`model_lock`.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        check_model(model)
        AttentionInterface.register(ATTENTION_NAME, _qllm_attention)
        self.model = model
        self._family = family_of(model.config)
        self._base = self._family.base_model(model)
        self._lock = model_lock(model)
        with self._lock:
            attachment = _ATTACHMENTS.get(model)
            if attachment is None:
                rotary = cast(nn.Module, getattr(self._base, self._family.rotary_attr))
                if not isinstance(rotary, SwitchableRotary):
                    rotary = SwitchableRotary(rotary)
                native = model.config._attn_implementation or "sdpa"
                attachment = _Attachment(
                    rotary=rotary, native_attention="sdpa" if native == ATTENTION_NAME else native
                )
                setattr(self._base, self._family.rotary_attr, rotary)
                _ATTACHMENTS[model] = attachment
        self._rotary = attachment.rotary
        self._native_attention = attachment.native_attention
        self._can_rank = question_attention.register(attachment.native_attention)

    def question_attention(
        self, rank_span: tuple[int, int], document_span: tuple[int, int], block_size: int
    ) -> question_attention.QuestionAttention | None:
        """A recorder of the question's attention for a read with the model's own attention.

        ``None`` where the native attention cannot be wrapped (eager).
        """
        if not self._can_rank:
            return None
        return question_attention.QuestionAttention(
            rank_span, document_span, block_size, self._native_attention
        )

    @property
    def rotary(self) -> nn.Module:
        """The model's real rotary module (cos/sin at any position)."""
        return self._rotary.rotary

    @contextlib.contextmanager
    def qllm(self) -> Iterator[None]:
        """Within this block the model's attention is the engine's, and RoPE is left to it.

        Holds the model's lock: a step of another engine or request waits for this one.
        """
        with self._lock:
            self.model.set_attn_implementation(ATTENTION_NAME)
            self._rotary.identity = True
            try:
                yield
            finally:
                self._rotary.identity = False
                self.model.set_attn_implementation(self._native_attention)

    def detach(self) -> PreTrainedModel:
        """Restore the model's own rotary module and return the model.

        Every engine on the model stops working; detach once all of them are done.
        """
        with self._lock:
            setattr(self._base, self._family.rotary_attr, self._rotary.rotary)
            _ATTACHMENTS.pop(self.model, None)
        return self.model
