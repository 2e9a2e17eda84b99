"""QLLMEngine: answer questions about long documents with a loaded transformers model."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, StaticCache

from .answering.decoding import decode
from .answering.reread import SEPARATOR, Passage, max_reread_length, passages_for, reread_ids
from .config import QLLMConfig
from .errors import (
    ConfigError,
    InputTooLongError,
    InsufficientMemoryError,
)
from .inputs.documents import check_text
from .inputs.validation import question_span as checked_span
from .inputs.validation import token_ids, vocab_size
from .kernels.backends import select_attention
from .kernels.rope import RotaryTable
from .memory.cache import MemoryCache, default_cache_bytes
from .memory.capacity import check_fits
from .memory.document import QUESTION_ROOM, DocumentMemory, document_hash, state_nbytes
from .memory.host_allocator import tune_host_allocator
from .memory.request import RequestMemory, RequestPlan
from .memory.retrieval import question_shares
from .models.forward import Forward, NativeForward, QLLMForward
from .models.patching import AttachedModel
from .models.question_attention import QuestionAttention
from .options import GenerationOptions
from .progress import Phase, prefill_progress
from .prompt import PromptLayout, build_document_prompt, build_prompt, encode_text
from .results import Answer, AnswerStats, AnswerStream, RetrievedBlock

logger = logging.getLogger(__name__)

FULL_ATTENTION_CHUNK = 2048
"""Prefill chunk of ``full`` mode: its attention holds chunk x length scores per head."""


__all__ = ["GenerationOptions", "QLLMEngine"]


class QLLMEngine:
    """Query-aware long-context inference over a loaded causal LM (batch size 1).

    A request reads its document afresh (:meth:`answer` with a string), or reads on from a
    document read once (:meth:`read`, then :meth:`answer` with the memory). Requests (of
    this engine, or of any engine on the same model) run concurrently step by step: each
    model forward step holds the model's lock (:func:`~qllm_core.models.patching.model_lock`),
    nothing is held between steps.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        config: QLLMConfig | None = None,
        progress: bool | None = None,
        memory_cache_bytes: int | None = None,
    ) -> None:
        self.config = config or QLLMConfig()
        self.memories = MemoryCache(
            default_cache_bytes() if memory_cache_bytes is None else memory_cache_bytes
        )
        """Recently read documents (:meth:`memory_for`), bounded in bytes (default: a
        quarter of the available RAM; 0 keeps none)."""
        self._attached = AttachedModel(model)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.progress = progress
        self._vocab_size = vocab_size(model)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        if self.device.type == "cpu":
            tune_host_allocator()
        select_attention(self.config.attention_backend, self.device)  # fails early if it can't run
        self._rope = RotaryTable(self._attached.rotary, device=self.device, dtype=self.dtype)
        self.eos_token_ids = _eos_ids(model, tokenizer)
        """Tokens that end an answer: the model's, its generation config's and the tokenizer's."""

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
        """Load a model (``None``: the embedded SmolLM2-135M) and attach the engine."""
        from .models.loading import load_model

        model, tokenizer = load_model(source, device=device, dtype=dtype)
        config = config or QLLMConfig.default_for(source)
        return cls(
            model,
            tokenizer,
            config=config,
            progress=progress,
            memory_cache_bytes=memory_cache_bytes,
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
        Options: ``max_new_tokens`` (256), ``min_new_tokens`` (0: an end-of-sequence
        token may end the answer at once), ``temperature`` (0: greedy), ``top_p`` (1),
        ``repetition_penalty`` (1: off), ``no_repeat_ngram_size`` (0: off), ``seed``,
        ``stop`` (strings), ``mode`` (overrides ``config.mode``). Every option
        is validated (:meth:`GenerationOptions.from_kwargs`) before the document is read.
        """
        opts = GenerationOptions.from_kwargs(**options)
        if isinstance(document, DocumentMemory):
            if mode is not None:
                raise ConfigError(
                    f"mode={mode!r} cannot apply to a document memory: it was read in mode "
                    f"{document.mode!r}; read the document again with engine.read(text, "
                    f"mode={mode!r})"
                )
            return self._stream_memory(document, check_text("question", question), opts)
        if mode is not None:
            self.config.replace(mode=mode)  # a bad mode fails before the document is read
        document = check_text("document", document)
        question = check_text("question", question)
        layout = build_prompt(self.tokenizer, document, question)
        return self._stream(
            layout.input_ids,
            layout.question_span,
            layout.final_question_span[0],
            layout,
            mode,
            opts,
        )

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
        config = self.config if mode is None else self.config.replace(mode=mode)
        prompt = build_document_prompt(self.tokenizer, document)
        ids = prompt.input_ids
        _check_input_length("the document takes", len(ids), config)
        config = self._resolve_mode(config, len(ids) + QUESTION_ROOM)
        self._check_fits(len(ids), QUESTION_ROOM, config)
        t0 = time.perf_counter()
        with torch.inference_mode():
            step = self.new_forward(config, RequestPlan(None, record_from=len(ids)))
            self._prefill(step, ids, config)
        state = step.memory if isinstance(step, QLLMForward) else step.cache
        assert not isinstance(state, StaticCache)  # reserved for decoding only
        from .memory.persistence import engine_identity

        return DocumentMemory(
            prompt=prompt,
            config=config,
            state=state,
            document_sha256=document_hash(document),
            identity=engine_identity(self),
            read_seconds=time.perf_counter() - t0,
            nbytes=state_nbytes(state),
        )

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
        opts = GenerationOptions.from_kwargs(**options)
        ids = token_ids(input_ids, self._vocab_size)
        question_span = checked_span(question_span, len(ids))
        record_from = question_span[1] if question_span else len(ids)
        return self._stream(ids, question_span, record_from, None, mode, opts)

    def _stream(
        self,
        ids: list[int],
        question_span: tuple[int, int] | None,
        record_from: int,
        layout: PromptLayout | None,
        mode: str | None,
        opts: GenerationOptions,
    ) -> AnswerStream:
        config = self.config if mode is None else self.config.replace(mode=mode)
        _check_input_length("the prompt has", len(ids), config)
        config = self._resolve_mode(config, len(ids) + opts.max_new_tokens)
        rereads = layout is not None and _rereads(config)
        if rereads and layout is not None:
            self._check_reread_fits(layout, config, opts.max_new_tokens)
        self._check_fits(len(ids), opts.max_new_tokens, config)
        plan = RequestPlan(
            question_span=question_span,
            record_from=record_from,
            rank_span=layout.final_question_span if layout and config.mode != "full" else None,
        )
        progress = _Progress(mode=config.mode, question_found=question_span is not None)

        def read() -> tuple[Forward, torch.Tensor]:
            step = self.new_forward(config, plan)
            if isinstance(step, NativeForward) and layout is not None:
                step.recorder = self._question_attention(layout, config)
            return step, self._prefill(step, ids, config)

        return AnswerStream(
            self._run(progress, read, ids, plan, layout, config, opts),
            cancelled=progress.cancelled,
        )

    def _stream_memory(
        self, memory: DocumentMemory, question: str, opts: GenerationOptions
    ) -> AnswerStream:
        """:meth:`stream` from a document memory: the question and answer read on from a fork."""
        layout = memory.prompt.with_question(self.tokenizer, question)
        ids, config = layout.input_ids, memory.config
        window = self.window_tokens(config)
        if config.mode == "full" and len(ids) + opts.max_new_tokens > window:
            raise InputTooLongError(
                f"the document was read with the model's own attention, and with the question "
                f"and max_new_tokens={opts.max_new_tokens:,} the prompt ({len(ids):,} tokens) "
                f"passes its {window:,}-token window; shorten the question, "
                "lower max_new_tokens, or read the document with mode='qllm'"
            )
        rereads = _rereads(config)
        reread_into = memory.prompt.question_first(self.tokenizer, question) if rereads else None
        if reread_into is not None:
            self._check_reread_fits(reread_into, config, opts.max_new_tokens)
        plan = RequestPlan(
            question_span=layout.question_span,
            record_from=layout.question_span[1],
            rank_span=layout.final_question_span if config.mode != "full" else None,
        )
        fed = ids[memory.tokens :]

        def read() -> tuple[Forward, torch.Tensor]:
            state = memory.fork(plan)
            step: Forward
            if isinstance(state, RequestMemory):
                step = QLLMForward(self.model, self._attached, state)
            else:
                recorder = self._question_attention(layout, config)
                step = NativeForward(self.model, cache=state, recorder=recorder)
            return step, self._prefill(step, fed, config)

        progress = _Progress(mode=config.mode, question_found=True)
        return AnswerStream(
            self._run(
                progress,
                read,
                ids,
                plan,
                layout,
                config,
                opts,
                memory_tokens=memory.tokens,
                reread_into=reread_into,
            ),
            cancelled=progress.cancelled,
        )

    def _check_fits(self, prompt_tokens: int, max_new_tokens: int, config: QLLMConfig) -> None:
        """``check_fits`` for prompt plus answer, naming ``max_new_tokens`` when it is the cause."""
        fits = {"model_config": self.model.config, "config": config, "device": self.device}
        try:
            check_fits(prompt_tokens + max_new_tokens, dtype=self.dtype, **fits)
        except InsufficientMemoryError as error:
            check_fits(prompt_tokens, dtype=self.dtype, **fits)  # the prompt alone fails: as is
            raise InsufficientMemoryError(
                f"max_new_tokens={max_new_tokens:,} does not fit: the prompt's "
                f"{prompt_tokens:,} tokens fit, but not with that many new ones; lower "
                f"max_new_tokens ({error})"
            ) from error

    def _run(
        self,
        progress: _Progress,
        read: Callable[[], tuple[Forward, torch.Tensor]],
        ids: list[int],
        plan: RequestPlan,
        layout: PromptLayout | None,
        config: QLLMConfig,
        opts: GenerationOptions,
        *,
        memory_tokens: int = 0,
        reread_into: PromptLayout | None = None,
    ) -> Generator[str, None, Answer]:
        """Read (``read``: the forward state and the last logits), re-read, then decode.

        ``ids``: the whole prompt, of which the first ``memory_tokens`` come from a document
        memory (already read); ``reread_into``: the prompt the passages are re-read in, when
        not ``layout`` (after a memory: the per-question prompt).
        """
        # Inference mode is entered for each stretch of work, never across a ``yield``:
        # it is thread-local state that would leak into the consumer's code.
        with torch.inference_mode():
            t0 = time.perf_counter()
            step, logits = read()
            memory = step.memory if isinstance(step, QLLMForward) else None
            passages: list[Passage] = []
            reread_seconds = 0.0
            if memory is not None and _rereads(config) and layout is not None:
                reread_started = time.perf_counter()
                passages, step, logits = self._reread(memory, layout, reread_into or layout, config)
                reread_seconds = time.perf_counter() - reread_started
            if isinstance(step, NativeForward):
                step.reserve(opts.max_new_tokens)
        prefill_seconds = time.perf_counter() - t0
        progress.read(len(ids) - memory_tokens, prefill_seconds)
        t1 = time.perf_counter()

        def counted(generated: int) -> None:
            progress.generated = generated

        decoded = yield from decode(step, logits, opts, self.tokenizer, self.eos_token_ids, counted)
        with torch.inference_mode():
            stats = AnswerStats(
                mode=config.mode,
                tokens_read=len(ids) - memory_tokens,
                tokens_generated=decoded.tokens,
                prefill_seconds=prefill_seconds,
                decode_seconds=time.perf_counter() - t1,
                question_found=plan.question_span is not None,
                retrieved_blocks=(
                    _passage_evidence(passages, layout)
                    if passages
                    else _full_evidence(step.recorder, config, layout)
                    if isinstance(step, NativeForward) and step.recorder is not None
                    else _evidence(memory, config, layout, ranked=plan.rank_span is not None)
                ),
                reread_tokens=sum(p.end - p.start for p in passages),
                reread_seconds=reread_seconds,
                memory_tokens=memory_tokens,
            )
        return Answer(text=decoded.text, finish_reason=decoded.finish_reason, stats=stats)

    def window_tokens(self, config: QLLMConfig | None = None) -> int:
        """Longest prompt plus answer read with the model's own attention in mode ``auto``."""
        config = config or self.config
        trained = getattr(self.model.config, "max_position_embeddings", None)
        if config.full_attention_max_tokens is not None:
            return config.full_attention_max_tokens
        if not isinstance(trained, int):
            raise ConfigError(
                "the model's config has no max_position_embeddings; set "
                "QLLMConfig.full_attention_max_tokens to its trained context"
            )
        return trained

    def _resolve_mode(self, config: QLLMConfig, tokens: int) -> QLLMConfig:
        """Mode ``auto`` made concrete: ``full`` when ``tokens`` fit the window, else ``qllm``."""
        if config.mode != "auto":
            return config
        return config.replace(mode="full" if tokens <= self.window_tokens(config) else "qllm")

    def _question_attention(
        self, layout: PromptLayout, config: QLLMConfig
    ) -> QuestionAttention | None:
        """A recorder of the final question's attention over the document (mode ``full``)."""
        return self._attached.question_attention(
            layout.final_question_span, layout.document_span, config.block_size
        )

    def _check_reread_fits(
        self, layout: PromptLayout, config: QLLMConfig, max_new_tokens: int
    ) -> None:
        doc_start, doc_end = layout.document_span
        longest = max_reread_length(
            len(layout.input_ids),
            doc_end - doc_start,
            config.reread_tokens,
            config.block_size,
            len(encode_text(self.tokenizer, SEPARATOR)),
        )
        window = self.window_tokens(config)
        if longest + max_new_tokens > window:
            raise ConfigError(
                f"the re-read prompt ({longest:,} tokens at most) plus max_new_tokens="
                f"{max_new_tokens:,} exceeds the {window:,}-token window of the model's own "
                "attention; lower QLLMConfig.reread_tokens or max_new_tokens"
            )

    def _reread(
        self, memory: RequestMemory, layout: PromptLayout, into: PromptLayout, config: QLLMConfig
    ) -> tuple[list[Passage], NativeForward, torch.Tensor]:
        """Second pass: the passages the question attended to most, read with full attention.

        Passages are chosen in ``layout`` (the prompt read) and returned so; the re-read
        prompt is ``into`` (the same document, perhaps placed elsewhere) with its document
        replaced by them.
        """
        relevance = memory.block_relevance(config.reread_ranking)
        passages = passages_for(
            relevance.mean(dim=0) if relevance.numel() else relevance.new_zeros(0),
            layout.document_span,
            config,
        )
        step = NativeForward(self.model)
        separator = encode_text(self.tokenizer, SEPARATOR)
        shift = into.document_span[0] - layout.document_span[0]
        moved = [Passage(p.start + shift, p.end + shift, p.score) for p in passages]
        reread = reread_ids(into.input_ids, moved, into.document_span, separator)
        logits = self._prefill(step, reread, config.replace(mode="full"), phase="reread")
        return passages, step, logits

    def new_forward(
        self, config: QLLMConfig | None = None, plan: RequestPlan | None = None
    ) -> QLLMForward | NativeForward:
        """A fresh forward pass state (lower level than :meth:`generate`; not locked).

        ``NativeForward`` (the model's own attention) in mode ``full``, else
        ``QLLMForward`` over new memory; ``plan`` gives the question span.
        """
        config = config or self.config
        if config.mode == "full":
            return NativeForward(self.model)
        memory = RequestMemory(
            config=config,
            plan=plan or RequestPlan(None, 0),
            rope=self._rope,
            device=self.device,
            dtype=self.dtype,
        )
        return QLLMForward(self.model, self._attached, memory)

    def _prefill(
        self, step: Forward, ids: list[int], config: QLLMConfig, phase: Phase = "read"
    ) -> torch.Tensor:
        chunk = config.prefill_chunk_size
        if config.mode == "full":
            chunk = min(chunk, FULL_ATTENTION_CHUNK)
        bar = prefill_progress(len(ids), self.progress, phase=phase)
        try:
            for start in range(0, len(ids), chunk):
                logits = step(ids[start : start + chunk])
                bar.update(min(chunk, len(ids) - start))
        finally:
            bar.close()
        return logits


def _check_input_length(what: str, tokens: int, config: QLLMConfig) -> None:
    """:class:`InputTooLongError` when ``tokens`` pass ``config.max_input_tokens``."""
    if tokens > config.max_input_tokens:
        raise InputTooLongError(
            f"{what} {tokens:,} tokens, over max_input_tokens={config.max_input_tokens:,}; "
            "shorten the document or raise QLLMConfig.max_input_tokens"
        )


def _rereads(config: QLLMConfig) -> bool:
    """Whether requests under ``config`` re-read (a Q-LLM read that keeps memory blocks)."""
    return config.reread_tokens > 0 and config.mode in ("qllm", "infllm")


def _evidence(
    memory: RequestMemory | None, config: QLLMConfig, layout: PromptLayout | None, *, ranked: bool
) -> tuple[RetrievedBlock, ...]:
    """Blocks retrieved while answering and the ``topk`` most relevant, best first.

    ``ranked`` (the final question's queries were kept): scored as the re-read scores them
    (:meth:`RequestMemory.block_relevance` under ``config.reread_ranking``, averaged over
    layers), so the evidence is what a re-read would choose; otherwise (a prompt given as
    ids) by the question vector (:func:`_question_scores`). With document char spans and
    how often each block was retrieved while answering; blocks of the prompt template (the
    question before the document) are left out when the layout is known.
    """
    if memory is None:
        return ()
    if ranked:
        relevance = memory.block_relevance(config.reread_ranking)
        scores = relevance.mean(dim=0).tolist() if relevance.numel() else []
    else:
        scores = _question_scores(memory)

    def in_document(block_id: int) -> bool:
        if layout is None:
            return True
        start = config.n_init + block_id * config.block_size
        doc_start, doc_end = layout.document_span
        return start < doc_end and doc_start < start + config.block_size

    ranked_ids = [b for b in range(len(scores)) if in_document(b)]
    best = sorted(ranked_ids, key=lambda b: -scores[b])[: config.topk]
    chosen = {b for b in memory.counts if in_document(b)} | set(best)
    blocks = []
    for block_id in chosen:
        start = config.n_init + block_id * config.block_size
        end = start + config.block_size
        chars = layout.char_span(start, end) if layout else None
        blocks.append(
            RetrievedBlock(
                token_start=start,
                token_end=end,
                count=memory.counts[block_id],
                char_start=chars[0] if chars else None,
                char_end=chars[1] if chars else None,
                score=scores[block_id] if block_id < len(scores) else 0.0,
            )
        )
    return tuple(sorted(blocks, key=lambda b: (-b.score, -b.count, b.token_start)))


def _full_evidence(
    recorder: QuestionAttention, config: QLLMConfig, layout: PromptLayout | None
) -> tuple[RetrievedBlock, ...]:
    """The ``topk`` document blocks the question attended to most in a ``full`` read.

    Scored as the re-read scores memory blocks (``config.reread_ranking``), over blocks of
    ``block_size`` document tokens; best first.
    """
    scores = recorder.relevance(config.reread_ranking).tolist()
    doc_start, doc_end = recorder.document_span
    blocks = []
    for block_id in sorted(range(len(scores)), key=lambda b: -scores[b])[: config.topk]:
        start = doc_start + block_id * config.block_size
        end = min(doc_end, start + config.block_size)
        chars = layout.char_span(start, end) if layout else None
        blocks.append(
            RetrievedBlock(
                token_start=start,
                token_end=end,
                count=0,
                char_start=chars[0] if chars else None,
                char_end=chars[1] if chars else None,
                score=scores[block_id],
            )
        )
    return tuple(blocks)


def _question_scores(memory: RequestMemory) -> list[float]:
    """Per memory block, its share of the question's attention over all blocks.

    Per layer and head, a softmax over the blocks of ``question . representative /
    sqrt(head_dim)``, averaged over heads and layers: the scores sum to 1. Empty when no
    layer has a question vector (no question span) or no block. Cheap: one dot product
    per block, layer and head.
    """
    rows = []
    for layer in memory.layers.values():
        reprs = layer.store.representatives
        if layer.question is None or not len(reprs):
            continue
        rows.append(question_shares(reprs, layer.question))
    if not rows:
        return []
    return [float(x) for x in torch.stack(rows).mean(dim=0)]


def _passage_evidence(
    passages: list[Passage], layout: PromptLayout | None
) -> tuple[RetrievedBlock, ...]:
    """The re-read passages as evidence, best first (scored passages before the always-kept)."""
    blocks = []
    for passage in sorted(passages, key=lambda p: -p.score):
        chars = layout.char_span(passage.start, passage.end) if layout else None
        blocks.append(
            RetrievedBlock(
                token_start=passage.start,
                token_end=passage.end,
                count=1,
                char_start=chars[0] if chars else None,
                char_end=chars[1] if chars else None,
                score=passage.score,
            )
        )
    return tuple(blocks)


def _eos_ids(model: PreTrainedModel, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return frozenset(ids)


def _drain(stream: AnswerStream) -> Answer:
    with stream:
        return stream.collect()


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
        decode = time.perf_counter() - self.decode_started if self.decode_started else 0.0
        stats = AnswerStats(
            mode=self.mode,
            tokens_read=self.tokens_read,
            tokens_generated=self.generated,
            prefill_seconds=self.prefill_seconds,
            decode_seconds=decode,
            question_found=self.question_found,
        )
        return Answer(text=text, finish_reason="cancelled", stats=stats)
