"""The request pipeline: read, re-read, decode.

A :class:`~qllm_core.answering.request.Request` runs in three stages, each a seam of its
own (the batching scheduler, the server and the GPU kernels use these):

1. **read** (:meth:`Pipeline.read`): the prompt, or the question after a document memory,
   fed chunk by chunk through a :class:`~qllm_core.models.forward.Forward` over a fresh or
   forked :class:`~qllm_core.memory.state.ReadState`;
2. **re-read** (:meth:`Pipeline.reread`, modes whose read ranks blocks): the passages the
   question attended to most, read again with the model's own attention
   (:mod:`~qllm_core.answering.reread`);
3. **decode** (:func:`~qllm_core.answering.decoding.decode`): one token per forward step.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from ..config import QLLMConfig
from ..inputs.prompt import DocumentPrompt, encode_text
from ..memory.admission import Admission
from ..memory.capacity import KVNeed, free_bytes
from ..memory.request import RequestPlan
from ..memory.state import ReadState, StateContext, new_state
from ..models.forward import Forward
from ..models.patching import AttachedModel
from ..models.question_attention import QuestionAttention
from ..modes import NATIVE_MODE, mode_spec
from ..progress import Phase, prefill_progress
from ..results import Answer, AnswerStats, AnswerStream
from .decoding import Decoded, decode
from .evidence import passage_evidence
from .request import Request
from .reread import SEPARATOR, Passage, reread_prompt

FULL_ATTENTION_CHUNK = 2048
"""Prefill chunk of the model's own attention: it holds chunk x length scores per head."""


class Stopped(Exception):
    """A read stopped between prefill chunks: its request was cancelled.

    (:meth:`~qllm_core.results.AnswerStream.cancel` set :attr:`Request.stop`.)
    """


@dataclass(frozen=True)
class Pipeline:
    """Runs requests through their stages on one attached model.

    ``progress``: show a progress bar while reading (``None``: when stderr is a terminal);
    ``decoder``: the decode stage, :func:`~qllm_core.answering.decoding.decode` (alone)
    or a :class:`~qllm_core.answering.scheduler.Scheduler`'s (batched).
    """

    model: PreTrainedModel
    attached: AttachedModel
    tokenizer: Any
    context: StateContext
    eos_token_ids: Collection[int]
    progress: bool | None = None
    decoder: Callable[..., Generator[str, None, Decoded]] = decode
    admission: Admission = field(default_factory=Admission)
    """Holds each request's keys and values while it runs (:mod:`~qllm_core.memory.admission`)."""

    def stream(self, request: Request) -> AnswerStream:
        """The answer to ``request``, streamed; nothing is read until it is iterated."""
        progress = _Progress(request.config.mode, request.plan.question_span is not None)
        return AnswerStream(
            self._admitted(request, progress), cancelled=progress.cancelled, stop=request.stop
        )

    def new_forward(self, config: QLLMConfig, plan: RequestPlan) -> Forward:
        """A forward step over a new, empty state for ``config.mode`` (a concrete mode)."""
        return new_state(config, plan, self.context).forward(self.model, self.attached)

    def read_document(self, prompt: DocumentPrompt, config: QLLMConfig, kv: KVNeed) -> ReadState:
        """The state a question-free read of ``prompt`` leaves (for a document memory).

        ``kv``: what it keeps, held while it reads.
        """
        ids = prompt.input_ids
        state = new_state(config, RequestPlan(None, record_from=len(ids)), self.context)
        free = functools.partial(free_bytes, kv, config, self.context.device)
        with self.admission.hold(kv, free), torch.inference_mode():
            self.prefill(state.forward(self.model, self.attached), ids, config)
        return state

    def read(self, request: Request) -> tuple[Forward, torch.Tensor]:
        """Stage 1: the request's prompt read; the step to go on with and the last logits."""
        if request.memory is not None:
            state = request.memory.fork(request.plan)
        else:
            state = new_state(request.config, request.plan, self.context)
        step = state.forward(self.model, self.attached, self._recorder(request))
        fed = request.ids[request.memory_tokens :]
        return step, self.prefill(step, fed, request.config, stop=request.stop)

    def reread(
        self, request: Request, step: Forward
    ) -> tuple[list[Passage], Forward, torch.Tensor]:
        """Stage 2: the passages ``step``'s read ranked highest, read with full attention.

        Returns the passages (in the read prompt's positions), the new step and its last
        logits.
        """
        layout, config = request.layout, request.config
        assert layout is not None  # Request.rereads
        passages, ids = reread_prompt(
            step.relevance(config),
            layout,
            request.reread_into or layout,
            config,
            encode_text(self.tokenizer, SEPARATOR),
        )
        native = config.replace(mode=NATIVE_MODE)
        reread = self.new_forward(native, RequestPlan(None, record_from=len(ids)))
        return passages, reread, self.prefill(reread, ids, native, "reread", request.stop)

    def prefill(
        self,
        step: Forward,
        ids: list[int],
        config: QLLMConfig,
        phase: Phase = "read",
        stop: threading.Event | None = None,
    ) -> torch.Tensor:
        """Feed ``ids`` in chunks; the last position's logits, (vocab,).

        Raises:
            Stopped: ``stop`` was set (checked before each chunk).
        """
        chunk = config.prefill_chunk_size
        if not mode_spec(config.mode).block_memory:
            chunk = min(chunk, FULL_ATTENTION_CHUNK)
        bar = prefill_progress(len(ids), self.progress, phase=phase)
        try:
            for start in range(0, len(ids), chunk):
                if stop is not None and stop.is_set():
                    raise Stopped
                logits = step(ids[start : start + chunk])
                bar.update(min(chunk, len(ids) - start))
        finally:
            bar.close()
        return logits

    def _recorder(self, request: Request) -> QuestionAttention | None:
        """A recorder of the final question's attention over the document, or ``None``.

        Only where the model's own attention reads a known layout: the evidence of a
        ``full`` read.
        """
        layout, config = request.layout, request.config
        if layout is None or mode_spec(config.mode).block_memory:
            return None
        return self.attached.question_attention(
            layout.final_question_span, layout.document_span, config.block_size
        )

    def _admitted(self, request: Request, progress: _Progress) -> Generator[str, None, Answer]:
        """:meth:`_run` once the request fits beside those in flight, holding its bytes."""
        free = functools.partial(free_bytes, request.kv, request.config, self.context.device)
        with self.admission.hold(request.kv, free):
            return (yield from self._run(request, progress))

    def _run(self, request: Request, progress: _Progress) -> Generator[str, None, Answer]:
        """Read, re-read, decode; yields the answer's text deltas, returns the answer."""
        # Inference mode is entered for each stretch of work, never across a ``yield``:
        # it is thread-local state that would leak into the consumer's code.
        config, options = request.config, request.options
        with torch.inference_mode():
            t0 = time.perf_counter()
            try:
                read, logits = self.read(request)
                step: Forward = read
                passages: list[Passage] = []
                reread_seconds = 0.0
                if request.rereads:
                    reread_started = time.perf_counter()
                    passages, step, logits = self.reread(request, step)
                    reread_seconds = time.perf_counter() - reread_started
            except Stopped:  # AnswerStream.cancel during a read: nothing was generated
                return progress.cancelled("")
        prefill_seconds = time.perf_counter() - t0
        tokens_read = len(request.ids) - request.memory_tokens
        progress.read(tokens_read, prefill_seconds)
        t1 = time.perf_counter()

        def counted(generated: int) -> None:
            progress.generated = generated

        decoded = yield from self.decoder(
            step, logits, options, self.tokenizer, self.eos_token_ids, counted
        )
        with torch.inference_mode():
            evidence = (
                passage_evidence(passages, request.layout)
                if passages
                else read.evidence(config, request.layout)
            )
            stats = AnswerStats(
                mode=config.mode,
                tokens_read=tokens_read,
                tokens_generated=decoded.tokens,
                prefill_seconds=prefill_seconds,
                decode_seconds=time.perf_counter() - t1,
                question_found=request.plan.question_span is not None,
                retrieved_blocks=evidence,
                reread_tokens=sum(p.end - p.start for p in passages),
                reread_seconds=reread_seconds,
                memory_tokens=request.memory_tokens,
            )
        return Answer(text=decoded.text, finish_reason=decoded.finish_reason, stats=stats)


@dataclass
class _Progress:
    """How far a request got: what :meth:`AnswerStream.close` reports as the partial answer."""

    mode: str
    question_found: bool
    tokens_read: int = 0
    prefill_seconds: float = 0.0
    generated: int = 0
    decode_started: float | None = None

    def read(self, tokens: int, seconds: float) -> None:
        """The prompt was read: ``tokens`` in ``seconds``."""
        self.tokens_read, self.prefill_seconds = tokens, seconds
        self.decode_started = time.perf_counter()

    def cancelled(self, text: str) -> Answer:
        """The partial answer: ``text`` delivered so far, finish reason ``cancelled``."""
        decode_seconds = time.perf_counter() - self.decode_started if self.decode_started else 0.0
        stats = AnswerStats(
            mode=self.mode,
            tokens_read=self.tokens_read,
            tokens_generated=self.generated,
            prefill_seconds=self.prefill_seconds,
            decode_seconds=decode_seconds,
            question_found=self.question_found,
        )
        return Answer(text=text, finish_reason="cancelled", stats=stats)
