"""One forward pass of the model over new tokens, through the engine or as shipped.

Each call holds the model's lock (:func:`~qllm_core.models.patching.model_lock`) for that step
only, in inference mode: a request that is paused (a stream not iterated) or abandoned
holds nothing, and requests of any engines sharing the model interleave step by step.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Protocol

import torch
from transformers import DynamicCache, PreTrainedModel, StaticCache
from transformers.cache_utils import DynamicLayer, StaticLayer

from ..answering.evidence import full_evidence, memory_evidence
from .batch import CacheRow, Row
from .patching import MEMORY_KWARG, AttachedModel, model_lock
from .question_attention import RECORDER_KWARG, QuestionAttention

if TYPE_CHECKING:
    from ..config import QLLMConfig
    from ..inputs.prompt import PromptLayout
    from ..kernels.rope import RotaryTable
    from ..memory.request import RequestMemory
    from ..results import RetrievedBlock


class Forward(Protocol):
    """Feeds new tokens to the model; returns the last position's logits, shape (vocab,)."""

    def __call__(self, ids: list[int]) -> torch.Tensor:
        """Run the model over ``ids`` (appended to everything fed so far)."""

    def reserve(self, new_tokens: int) -> None:
        """Make room for ``new_tokens`` more tokens before decoding (where it pays)."""

    def row(self, rope: RotaryTable, new_tokens: int) -> Row:
        """The request as a row of batched decode steps, with room for ``new_tokens``.

        See :mod:`~qllm_core.models.batch`; feed the step no more tokens afterwards.
        """

    def relevance(self, config: QLLMConfig) -> torch.Tensor:
        """Per block, the score the re-read ranks by under ``config``'s ``reread_*`` fields.

        :func:`~qllm_core.memory.retrieval.block_scores`; shape (blocks,), empty where
        nothing was ranked.
        """

    def evidence(
        self, config: QLLMConfig, layout: PromptLayout | None
    ) -> tuple[RetrievedBlock, ...]:
        """The blocks the question drew on, best first (:mod:`~qllm_core.answering.evidence`)."""


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

    def reserve(self, new_tokens: int) -> None:
        """Nothing to reserve: the memory grows block by block."""

    def row(self, rope: RotaryTable, new_tokens: int) -> Row:
        """The request memory itself: it attends for one batch entry as for a request."""
        return self.memory

    def relevance(self, config: QLLMConfig) -> torch.Tensor:
        """Each block's score as the re-read ranks it (:meth:`RequestMemory.ranked_scores`)."""
        return self.memory.ranked_scores(config)

    def evidence(
        self, config: QLLMConfig, layout: PromptLayout | None
    ) -> tuple[RetrievedBlock, ...]:
        """Memory blocks ranked and retrieved (:func:`.evidence.memory_evidence`)."""
        ranked = self.memory.plan.rank_span is not None
        return memory_evidence(self.memory, config, layout, ranked=ranked)


class NativeForward:
    """The model's own attention with transformers' KV cache (mode ``full``, re-reads).

    The prompt is read into a ``DynamicCache`` (each chunk attends to what came before it
    and no further); :meth:`reserve` then moves it into a ``StaticCache`` for decoding.
    With a ``recorder``, the chunks holding its rank span run through the registered
    ranking attention, which returns the native attention's output and records the
    question's attention over the document (:mod:`~qllm_core.models.question_attention`).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        cache: DynamicCache | None = None,
        recorder: QuestionAttention | None = None,
    ) -> None:
        """``cache``: keys and values of earlier tokens to read on from (default: none)."""
        self.model = model
        self.recorder = recorder
        self.cache: DynamicCache | StaticCache = (
            DynamicCache(config=model.config) if cache is None else cache
        )
        self._read_cache = self.cache
        """The cache the prompt was read into (what :meth:`row` hands on)."""
        self._lock = model_lock(model)
        # transformers 5.24 renamed the argument (the old name warns, and goes in 5.40)
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def reserve(self, new_tokens: int) -> None:
        """Move the cache into buffers with room for ``new_tokens`` more tokens.

        A ``DynamicCache`` concatenates each layer's keys and values into new tensors at
        every step, copying the whole cache once per token; a ``StaticCache`` writes one
        token in place. The keys and values are the same; the logits agree to rounding
        (the attention also sums the buffer's empty, masked places). Caches with
        sliding-window layers (a window of their own to roll) are kept as they are.
        """
        length = self.cache.get_seq_length()
        static = StaticCache(config=self.model.config, max_cache_len=length + new_tokens)
        if not length or len(self.cache.layers) != len(static.layers):
            return
        pairs = [
            (layer, into)
            for layer, into in zip(self.cache.layers, static.layers, strict=True)
            if type(layer) is DynamicLayer and type(into) is StaticLayer
        ]
        if len(pairs) != len(static.layers):
            return
        for layer, into in pairs:
            keys, values = layer.keys, layer.values
            assert keys is not None and values is not None  # filled by the prompt
            with torch.inference_mode():
                into.update(keys, values)
            layer.keys = layer.values = None  # freed as it goes (a fork's stay in its memory)
        self.cache = static

    def row(self, rope: RotaryTable, new_tokens: int) -> Row:
        """The KV cache read so far as a :class:`~qllm_core.models.batch.CacheRow`."""
        if self.cache is not self._read_cache:
            raise RuntimeError("a step reserved for decoding alone cannot join a batch")
        return CacheRow(self._read_cache, rope, new_tokens)

    def relevance(self, config: QLLMConfig) -> torch.Tensor:
        """Each document block's score as the recorder saw it; empty without one."""
        return self.recorder.relevance(config) if self.recorder else torch.zeros(0)

    def evidence(
        self, config: QLLMConfig, layout: PromptLayout | None
    ) -> tuple[RetrievedBlock, ...]:
        """Document blocks the question attended to (:func:`.evidence.full_evidence`)."""
        return full_evidence(self.recorder, config, layout) if self.recorder else ()

    def __call__(self, ids: list[int]) -> torch.Tensor:
        """Run the model over ``ids`` with its own attention and cache."""
        input_ids = torch.tensor([ids], device=self.model.device)
        start = self.cache.get_seq_length()
        recorder = self.recorder
        if recorder is not None and not recorder.covers(start, len(ids)):
            recorder = None
        extra: dict[str, QuestionAttention] = {}
        with self._lock, torch.inference_mode():
            native = self.model.config._attn_implementation
            if recorder is not None:
                recorder.start = start
                self.model.set_attn_implementation(recorder.implementation)
                extra[RECORDER_KWARG] = recorder
            try:
                out = self.model(
                    input_ids=input_ids,
                    use_cache=True,
                    logits_to_keep=1,
                    **{self._cache_arg: self.cache},
                    **extra,
                )
            finally:
                if recorder is not None:
                    self.model.set_attn_implementation(native)
        return out.logits[0, -1]
