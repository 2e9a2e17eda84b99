"""QLLMEngine: answer questions about long documents with a loaded transformers model.

The engine is a thin front over the request pipeline (:mod:`qllm_core.answering`): it
builds a request (:class:`~qllm_core.answering.request.RequestBuilder`), and the
:class:`~qllm_core.answering.pipeline.Pipeline` reads, re-reads and decodes it.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import Any

import torch
from transformers import PreTrainedModel

from .answering.decoding import decode
from .answering.pipeline import Pipeline
from .answering.request import RequestBuilder
from .answering.scheduler import Scheduler
from .config import QLLMConfig
from .inputs.documents import check_text
from .inputs.prompt import encode_text
from .inputs.validation import vocab_size
from .kernels.backends import select_attention
from .kernels.rope import RotaryTable
from .memory.cache import MemoryCache, default_cache_bytes
from .memory.document import DocumentMemory, document_hash
from .memory.host_allocator import tune_host_allocator
from .memory.persistence import read_memory
from .memory.request import RequestPlan
from .memory.state import StateContext, restore_state
from .models.family import eos_token_ids
from .models.forward import Forward
from .models.identity import model_identity
from .models.patching import AttachedModel
from .modes import resolve
from .options import GenerationOptions
from .results import Answer, AnswerStream

__all__ = ["GenerationOptions", "QLLMEngine"]


class QLLMEngine:
    """Query-aware long-context inference over a loaded causal LM.

    A request reads its document afresh (:meth:`answer` with a string), or reads on from a
    document read once (:meth:`read`, then :meth:`answer` with the memory). Requests (of
    this engine, or of any engine on the same model) read concurrently step by step, and
    decode in one batch (:attr:`scheduler`); each forward step holds the model's lock
    (:func:`~qllm_core.models.patching.model_lock`), nothing is held between steps.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        config: QLLMConfig | None = None,
        progress: bool | None = None,
        memory_cache_bytes: int | None = None,
        generation_defaults: GenerationOptions | None = None,
    ) -> None:
        config = config or QLLMConfig()
        self.generation_defaults = generation_defaults or GenerationOptions()
        """The decoding options of a request that leaves them out (each request may give
        its own); :meth:`from_pretrained` sets the model's
        (:meth:`GenerationOptions.default_for`)."""
        self.memories = MemoryCache(
            default_cache_bytes() if memory_cache_bytes is None else memory_cache_bytes
        )
        """Recently read documents (:meth:`memory_for`), bounded in bytes (default: a
        quarter of the available RAM; 0 keeps none)."""
        self.attached = AttachedModel(model)
        """The model with the engine attached (:mod:`~qllm_core.models.patching`)."""
        self.model = model.eval()
        self.tokenizer = tokenizer
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        if self.device.type == "cpu":
            tune_host_allocator()
        select_attention(config.attention_backend, self.device)  # fails early if it can't run
        rope = RotaryTable(self.attached.rotary, device=self.device, dtype=self.dtype)
        self.requests = RequestBuilder(
            tokenizer, config, model.config, self.device, self.dtype, vocab_size(model)
        )
        """Builds and checks each request before anything is read."""
        self.scheduler = Scheduler(model, self.attached, rope, config.max_batch_size)
        """Batches the decode steps of the requests in flight (``config.max_batch_size``)."""
        self.pipeline = Pipeline(
            model,
            self.attached,
            tokenizer,
            StateContext(model.config, rope, self.device, self.dtype),
            eos_token_ids(model, tokenizer),
            progress,
            decode if config.max_batch_size == 1 else self.scheduler.decode,
        )
        """Runs each request: read, re-read, decode."""

    @property
    def config(self) -> QLLMConfig:
        """The engine's config (each request may override its mode); may be replaced."""
        return self.requests.config

    @config.setter
    def config(self, config: QLLMConfig) -> None:
        select_attention(config.attention_backend, self.device)
        self.requests = dataclasses.replace(self.requests, config=config)
        self.scheduler.max_batch_size = config.max_batch_size
        decoder = decode if config.max_batch_size == 1 else self.scheduler.decode
        self.pipeline = dataclasses.replace(self.pipeline, decoder=decoder)

    @property
    def progress(self) -> bool | None:
        """Whether reads show a progress bar (``None``: when stderr is a terminal)."""
        return self.pipeline.progress

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Tokens that end an answer: the model's, its generation config's and the tokenizer's."""
        return frozenset(self.pipeline.eos_token_ids)

    @cached_property
    def identity(self) -> dict[str, str]:
        """The model's and tokenizer's names and hashes, which a saved memory must match."""
        return model_identity(self.model, self.tokenizer, self.model_name)

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike[str] | None = None,
        *,
        config: QLLMConfig | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        progress: bool | None = None,
        memory_cache_bytes: int | None = None,
    ) -> QLLMEngine:
        """Load a model (``None``: the embedded SmolLM2-135M) and attach the engine.

        The config and the decoding defaults are the model's (``default_for``) unless given.
        """
        from .models.loading import load_model

        model, tokenizer = load_model(source, device=device, dtype=dtype)
        return cls(
            model,
            tokenizer,
            config=config or QLLMConfig.default_for(source),
            progress=progress,
            memory_cache_bytes=memory_cache_bytes,
            generation_defaults=GenerationOptions.default_for(source),
        )

    @property
    def model_name(self) -> str:
        """The model's name (its directory or hub id, without the path)."""
        name = getattr(self.model.config, "name_or_path", "") or self.model.config.model_type
        return os.path.basename(str(name).rstrip("/")) or str(name)

    @property
    def max_input_tokens(self) -> int:
        """The longest prompt accepted, in tokens."""
        return self.config.max_input_tokens

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in the model's tokenizer, as a document (special tokens split)."""
        if not isinstance(text, str) or text.strip():
            check_text("text", text)
        return len(encode_text(self.tokenizer, text))

    def answer(self, document: str | DocumentMemory, question: str, **options: Any) -> Answer:
        """Answer ``question`` about ``document``; see :meth:`stream` for the options."""
        return _drain(self.stream(document, question, **options))

    def answer_many(
        self, requests: Sequence[tuple[str | DocumentMemory, str]], **options: Any
    ) -> list[Answer]:
        """Answer ``(document, question)`` pairs together; the answers in their order.

        Each is read in a thread of its own; their decode steps are batched.
        """
        workers = max(1, min(len(requests), self.config.max_batch_size))
        with ThreadPoolExecutor(workers, thread_name_prefix="quickllama") as pool:
            return list(pool.map(lambda r: self.answer(*r, **options), requests))

    def stream(
        self,
        document: str | DocumentMemory,
        question: str,
        *,
        mode: str | None = None,
        **options: Any,
    ) -> AnswerStream:
        """Stream the answer to ``question`` about ``document``.

        ``document``: the text, read for this question (question, document, question:
        the paper's query-aware read), or a :class:`DocumentMemory` from :meth:`read`,
        read on from (the question after the document; ``mode`` must then be ``None``).
        Options (left out or ``None``: :attr:`generation_defaults`): ``max_new_tokens``
        (256), ``min_new_tokens`` (0: an end-of-sequence token may end the answer at once),
        ``temperature`` (0: greedy), ``top_p`` (1), ``repetition_penalty`` (1: off),
        ``no_repeat_ngram_size`` (0: off; 6 for the embedded model), ``seed``, ``stop``
        (strings), ``mode`` (overrides ``config.mode``). Every option is validated
        (:meth:`GenerationOptions.with_options`) before the document is read.
        """
        opts = self.generation_defaults.with_options(**options)
        if isinstance(document, DocumentMemory):
            return self.pipeline.stream(self.requests.for_memory(document, question, mode, opts))
        if mode is not None:
            self.config.replace(mode=mode)  # a bad mode fails before the document is read
        document = check_text("document", document)
        question = check_text("question", question)
        return self.pipeline.stream(self.requests.for_text(document, question, mode, opts))

    def read(self, document: str, *, mode: str | None = None) -> DocumentMemory:
        """Read ``document`` once, with no question, into a memory that questions read on from.

        ``mode`` overrides ``config.mode``; ``auto`` reads with ``full`` attention when the
        document leaves :data:`~qllm_core.memory.document.QUESTION_ROOM` tokens of the
        window free, with ``qllm`` beyond. The memory holds the whole state (see
        :mod:`~qllm_core.memory.document`); :meth:`memory_for` keeps recent ones.
        """
        return self._read(check_text("document", document), mode)

    def _read(self, document: str, mode: str | None) -> DocumentMemory:
        """:meth:`read` of a document :func:`check_text` has passed."""
        prompt, config, kv = self.requests.for_document(document, mode)
        t0 = time.perf_counter()
        state = self.pipeline.read_document(prompt, config, kv)
        return DocumentMemory(
            prompt=prompt,
            config=config,
            state=state,
            document_sha256=document_hash(document),
            identity=self.identity,
            read_seconds=time.perf_counter() - t0,
        )

    def load_memory(self, path: str | os.PathLike[str]) -> DocumentMemory:
        """A memory saved with :meth:`DocumentMemory.save`, for this engine.

        Raises :class:`~qllm_core.errors.MemoryFileError` for a missing, truncated or
        edited file, and :class:`~qllm_core.errors.MemoryMismatchError` when it was made
        with another model, tokenizer or config (:mod:`~qllm_core.memory.persistence`).
        """
        saved = read_memory(path, self.identity, self.config)
        tokens = len(saved.prompt.input_ids)
        state = restore_state(saved.config, saved.layer_states, tokens, self.pipeline.context)
        return DocumentMemory.restored(saved, state)

    def memory_for(self, document: str, *, mode: str | None = None) -> tuple[DocumentMemory, bool]:
        """``document``'s memory from :attr:`memories`, or read now and kept there.

        Returns ``(memory, reused)``; the key is the document's hash, the engine's config
        and ``mode``.
        """
        document = check_text("document", document)
        key = (document_hash(document), self.config, mode)
        memory = self.memories.get(key)
        if memory is not None:
            return memory, True
        memory = self._read(document, mode)
        self.memories.put(key, memory)
        return memory, False

    def generate(
        self,
        input_ids: Sequence[int] | torch.Tensor,
        *,
        question_span: tuple[int, int] | None = None,
        **options: Any,
    ) -> Answer:
        """Answer a prompt given as token ids; ``question_span`` locates the question."""
        return _drain(self.stream_ids(input_ids, question_span=question_span, **options))

    def stream_ids(
        self,
        input_ids: Sequence[int] | torch.Tensor,
        *,
        question_span: tuple[int, int] | None = None,
        mode: str | None = None,
        **options: Any,
    ) -> AnswerStream:
        """Streaming form of :meth:`generate`."""
        opts = self.generation_defaults.with_options(**options)
        return self.pipeline.stream(self.requests.for_ids(input_ids, question_span, mode, opts))

    def window_tokens(self, config: QLLMConfig | None = None) -> int:
        """Longest prompt plus answer read with the model's own attention in mode ``auto``."""
        return self.requests.window_tokens(config)

    def new_forward(
        self, config: QLLMConfig | None = None, plan: RequestPlan | None = None
    ) -> Forward:
        """A fresh forward pass state (lower level than :meth:`generate`; not locked).

        The model's own attention over a KV cache in mode ``full``, else the engine's over
        a new request memory (``auto`` too: no length is known to choose by); ``plan``
        gives the question span.
        """
        config = config or self.config
        config = config.replace(mode=resolve(config.mode, fits_window=False))
        return self.pipeline.new_forward(config, plan or RequestPlan(None, 0))


def _drain(stream: AnswerStream) -> Answer:
    with stream:
        return stream.collect()
