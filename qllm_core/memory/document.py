"""A document read once: the engine's state after the document, for any number of questions.

:meth:`QLLMEngine.read <qllm_core.engine.QLLMEngine.read>` reads the template's start and
the document (:class:`~qllm_core.inputs.prompt.DocumentPrompt`), with no question, and keeps what
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

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import QLLMConfig
from ..inputs.prompt import DocumentPrompt
from .persistence import SavedMemory, save_memory
from .request import RequestPlan
from .state import ReadState

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
    mode); ``state``: what the read left (:class:`~qllm_core.memory.state.ReadState`),
    never fed again; ``identity``: the model's and tokenizer's identity
    (:attr:`QLLMEngine.identity <qllm_core.engine.QLLMEngine.identity>`), checked when it
    is loaded.
    """

    prompt: DocumentPrompt
    config: QLLMConfig
    state: ReadState
    document_sha256: str
    identity: dict[str, str]
    read_seconds: float = 0.0

    @property
    def mode(self) -> str:
        """The mode it was read with: ``full`` or a Q-LLM mode."""
        return self.config.mode

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors it holds (keys, values, representatives)."""
        return self.state.nbytes

    @property
    def tokens(self) -> int:
        """Prompt tokens it holds (the template's start and the document)."""
        return len(self.prompt.input_ids)

    def fork(self, plan: RequestPlan) -> ReadState:
        """A copy-on-write view of the state for one question (``plan``: its spans)."""
        return self.state.fork(plan)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write it to the directory ``path`` (:func:`.persistence.save_memory`)."""
        save_memory(self, path)

    @classmethod
    def restored(cls, saved: SavedMemory, state: ReadState) -> DocumentMemory:
        """A saved memory (:func:`.persistence.read_memory`) with its state restored."""
        return cls(
            saved.prompt,
            saved.config,
            state,
            saved.document_sha256,
            saved.identity,
            saved.read_seconds,
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str], engine: QLLMEngine) -> DocumentMemory:
        """Read a saved memory for ``engine``: :meth:`QLLMEngine.load_memory`."""
        return engine.load_memory(path)
