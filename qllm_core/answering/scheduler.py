"""Continuous batching: the decode steps of every request in flight run as one forward pass.

Each request reads its prompt in its own thread, as it would alone (the read, or a fork
of a document memory, and the re-read: see :mod:`~qllm_core.answering.pipeline`); its
decoding then joins the :class:`Scheduler`. One worker thread runs the batch: at every
step it chooses each request's next token from that request's own logits (its own
options, seed and stop strings, :class:`~qllm_core.answering.decoding.Decoder`), then
feeds the chosen tokens of all requests still answering through the model in one pass
(:func:`~qllm_core.models.batch.batch_step`). Requests join and leave between steps;
up to ``max_batch_size`` decode together, later ones wait for a place.

Greedy answers are the same token for token as a request decoded alone: each request
attends only over its own keys, and only the weight matrices are shared by the batch.
The projections of B tokens round differently from those of one, so in the Q-LLM modes a
block whose score ties another's to the last digits can be retrieved once more or less
while decoding: the evidence's retrieval counts may differ, its ranking (from the read)
does not.
A request whose consumer stops reading (a closed stream) leaves the batch at the next
step; a step that raises fails the requests in it, and the requests that come after run.

Not batched: the reads and re-reads. Each is a prefill of hundreds to thousands of
tokens, bound by arithmetic, not by reading the weights: on a CPU, B prefills in one pass
cost about B times one, so they run as they would alone (interleaved step by step under
the model's lock). The bound on requests in flight is ``max_batch_size`` for decoding;
each request's keys and values are checked against free memory when it is built
(:func:`~qllm_core.memory.capacity.check_fits`), one request at a time.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from ..kernels.rope import RotaryTable
from ..models.batch import Row, batch_step
from ..models.forward import Forward
from ..models.patching import AttachedModel
from ..options import GenerationOptions
from .decoding import Decoded, Decoder

_DONE = object()
"""Put on a request's queue after its last text."""


@dataclass(eq=False)
class _Entry:
    """One request in the batch: its decoding state, attention row and next logits."""

    decoder: Decoder
    row: Row
    logits: torch.Tensor
    on_token: Callable[[int], None] | None
    out: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    cancelled: bool = False


class Scheduler:
    """Batches the decode steps of the requests in flight on one attached model."""

    def __init__(
        self,
        model: PreTrainedModel,
        attached: AttachedModel,
        rope: RotaryTable,
        max_batch_size: int,
    ) -> None:
        self._model, self._attached, self._rope = model, attached, rope
        self.max_batch_size = max_batch_size
        self._waiting: deque[_Entry] = deque()
        self._active: list[_Entry] = []
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self.steps = 0
        """Batched forward steps run so far."""
        self.largest_batch = 0
        """The most requests one step has fed."""

    def decode(
        self,
        step: Forward,
        logits: torch.Tensor,
        options: GenerationOptions,
        tokenizer: Any,
        eos_token_ids: Collection[int],
        on_token: Callable[[int], None] | None = None,
    ) -> Generator[str, None, Decoded]:
        """:func:`~qllm_core.answering.decoding.decode`, with the steps batched."""
        decoder = Decoder(options, tokenizer, eos_token_ids, logits.device)
        if decoder.finish_reason is not None:  # max_new_tokens=0
            return decoder.result()
        with torch.inference_mode():
            row = step.row(self._rope, options.max_new_tokens)
        entry = _Entry(decoder, row, logits, on_token)
        self._submit(entry)
        try:
            while (item := entry.out.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            entry.cancelled = True  # a closed stream: the worker drops it at the next step
        return decoder.result()

    def _submit(self, entry: _Entry) -> None:
        with self._lock:
            self._waiting.append(entry)
            if self._worker is None:
                # not a daemon: it lives only while requests decode, and the interpreter
                # waits for it at exit rather than tearing torch down under it
                self._worker = threading.Thread(target=self._work, name="quickllama-batch")
                self._worker.start()

    def _work(self) -> None:
        """Run batched steps while any request is answering; then end (restarted on demand).

        Should the worker itself break, every request it holds gets the error (none may
        wait forever) and the next request starts a new worker.
        """
        try:
            self._steps()
        except BaseException as error:
            with self._lock:
                stranded = [*self._active, *self._waiting]
                self._active, self._waiting = [], deque()
                self._worker = None
            for entry in stranded:
                entry.out.put(error)
            raise

    def _steps(self) -> None:
        while batch := self._next_batch():
            live = [entry for entry in batch if self._choose(entry)]
            if not live:
                continue
            tokens = [entry.decoder.token for entry in live]
            try:
                logits = batch_step(self._model, self._attached, [e.row for e in live], tokens)
            except Exception as error:  # noqa: BLE001 - handed to the requests of this step
                for entry in live:
                    self._leave(entry, error)
                continue
            self.steps += 1
            self.largest_batch = max(self.largest_batch, len(live))
            for entry, row_logits in zip(live, logits, strict=True):
                entry.logits = row_logits

    def _next_batch(self) -> list[_Entry]:
        """The requests of the next step: those answering, then those waiting, if room.

        Empty (and the worker ends) when there are none.
        """
        with self._lock:
            self._active = [e for e in self._active if not e.cancelled]
            while self._waiting and len(self._active) < self.max_batch_size:
                entry = self._waiting.popleft()
                if not entry.cancelled:
                    self._active.append(entry)
            if not self._active:
                self._worker = None
            return list(self._active)

    def _choose(self, entry: _Entry) -> bool:
        """Choose ``entry``'s next token and hand on its text; whether it goes on."""
        decoder = entry.decoder
        try:
            delta = decoder.advance(entry.logits)
        except Exception as error:  # noqa: BLE001 - handed to this request alone
            self._leave(entry, error)
            return False
        if entry.on_token is not None and decoder.finish_reason != "eos":
            entry.on_token(decoder.tokens)
        if delta:
            entry.out.put(delta)
        if decoder.finish_reason is None:
            return True
        tail = decoder.flush()
        if tail:
            entry.out.put(tail)
        self._leave(entry, _DONE)
        return False

    def _leave(self, entry: _Entry, last: object) -> None:
        """Take ``entry`` out of the batch; ``last``: the end marker or an exception."""
        entry.out.put(last)
        with self._lock:
            if entry in self._active:
                self._active.remove(entry)
