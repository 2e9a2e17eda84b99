"""A document read once: the engine's state after the document, for any number of questions.

:meth:`QLLMEngine.read <qllm_core.engine.QLLMEngine.read>` reads the template's start and
the document (:class:`~qllm_core.prompt.DocumentPrompt`), with no question, and keeps what
the model's layers hold afterwards: with the Q-LLM modes the init tokens, the memory blocks
with their representative keys and the recent window (InfLLM's read: nothing is known of a
question yet); with ``full`` attention, transformers' KV cache. Each question then reads on
from a copy-on-write *fork* of that state: its tokens and answer go after the document and
are dropped with the fork, so the stored memory never changes and questions may run side by
side. The question still steers retrieval for its own tokens and the whole answer (its
queries become the question vector), and a re-read (``reread_tokens``) ranks the blocks by
the question's attention, as it does after a per-question read.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from ..config import QLLMConfig
from ..prompt import DocumentPrompt
from .request import RequestMemory, RequestPlan

if TYPE_CHECKING:
    from ..engine import QLLMEngine

QUESTION_ROOM = 512
"""Tokens a document read with ``full`` attention (mode ``auto``) leaves free in the model's
window for each question and its answer; a longer document is read with ``qllm``."""


def document_hash(document: str) -> str:
    """SHA-256 of the document text (UTF-8, with surrogates escaped), hex."""
    return hashlib.sha256(document.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, eq=False)
class DocumentMemory:
    """What the model holds after reading a document once.

    Answer from it with ``engine.answer(memory, question)`` or ``engine.stream(...)``.

    ``config``: the engine config it was read with, its mode concrete (``full`` or a Q-LLM
    mode); ``state``: a :class:`RequestMemory` (Q-LLM modes) or a ``DynamicCache`` (full),
    never fed again; ``identity``: the model's and tokenizer's identity
    (:func:`~qllm_core.memory.persistence.engine_identity`), checked when it is loaded.
    """

    prompt: DocumentPrompt
    config: QLLMConfig
    state: RequestMemory | DynamicCache
    document_sha256: str
    identity: dict[str, str]
    read_seconds: float = 0.0
    nbytes: int = field(default=0)
    """Bytes of the tensors it holds (keys, values, representatives)."""

    @property
    def mode(self) -> str:
        """The mode it was read with: ``full`` or a Q-LLM mode."""
        return self.config.mode

    @property
    def tokens(self) -> int:
        """Prompt tokens it holds (the template's start and the document)."""
        return len(self.prompt.input_ids)

    def fork(self, plan: RequestPlan) -> RequestMemory | DynamicCache:
        """A copy-on-write view of the state for one question (``plan``: its spans)."""
        if isinstance(self.state, RequestMemory):
            return self.state.fork(plan)
        return fork_cache(self.state)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write it to the directory ``path`` (:func:`~qllm_core.memory.persistence.save_memory`)."""
        from .persistence import save_memory

        save_memory(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], engine: QLLMEngine) -> DocumentMemory:
        """Read a saved memory for ``engine`` (:func:`~qllm_core.memory.persistence.load_memory`)."""
        from .persistence import load_memory

        return load_memory(path, engine)


def fork_cache(cache: DynamicCache) -> DynamicCache:
    """A cache that shares ``cache``'s tensors (copy on write).

    transformers' ``DynamicLayer.update`` concatenates into new tensors, so appending to
    the fork never changes ``cache``.
    """
    fork = copy.copy(cache)
    fork.layers = [copy.copy(layer) for layer in cache.layers]
    return fork


def cache_tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's ``(keys, values)`` in a KV cache: (1, kv_heads, tokens, head_dim)."""
    pairs = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        assert isinstance(keys, torch.Tensor) and isinstance(values, torch.Tensor)
        pairs.append((keys, values))
    return pairs


def state_nbytes(state: RequestMemory | DynamicCache) -> int:
    """Bytes of the tensors a memory's state holds."""
    if isinstance(state, DynamicCache):
        return sum(k.nbytes + v.nbytes for k, v in cache_tensors(state))
    total = 0
    for layer in state.layers.values():
        total += layer.store.host_bytes() + layer.store.representatives.nbytes
        total += layer.init_k.nbytes + layer.init_v.nbytes
        total += sum(t.nbytes for t in layer.recent.state().values())
    return total
