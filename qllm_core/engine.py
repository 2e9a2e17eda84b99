"""QLLMEngine: answer questions about long documents with a loaded transformers model."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from .backends import select_attention
from .capacity import check_fits
from .config import QLLMConfig
from .documents import check_text
from .errors import ConfigError, InputTooLongError
from .forward import Forward, NativeForward, QLLMForward
from .host_allocator import tune_host_allocator
from .layer_memory import RequestMemory, RequestPlan
from .patching import AttachedModel
from .progress import prefill_progress
from .reread import SEPARATOR, Passage, choose_passages, max_reread_length, reread_ids
from .prompt import PromptLayout, build_prompt
from .results import Answer, AnswerStats, AnswerStream, FinishReason, RetrievedBlock
from .rope import RotaryTable
from .sampling import TextAccumulator, next_token

logger = logging.getLogger(__name__)

FULL_ATTENTION_CHUNK = 2048
"""Prefill chunk of ``full`` mode: its attention holds chunk x length scores per head."""


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding settings of one request."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


class QLLMEngine:
    """Query-aware long-context inference over a loaded causal LM (batch size 1).

    Requests are serialized by a lock; each one starts from fresh memory.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        config: QLLMConfig | None = None,
        progress: bool | None = None,
    ) -> None:
        self.config = config or QLLMConfig()
        self._attached = AttachedModel(model)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.progress = progress
        self._lock = threading.Lock()
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        if self.device.type == "cpu":
            tune_host_allocator()
        select_attention(self.config.attention_backend, self.device)  # fails early if it can't run
        self._rope = RotaryTable(self._attached.rotary, device=self.device, dtype=self.dtype)
        self._eos = _eos_ids(model, tokenizer)
        self._separator = list(tokenizer(SEPARATOR, add_special_tokens=False)["input_ids"])

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike[str] | None = None,
        *,
        config: QLLMConfig | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        progress: bool | None = None,
    ) -> QLLMEngine:
        """Load a model (``None``: the embedded SmolLM2-135M) and attach the engine."""
        from .loading import load_model

        model, tokenizer = load_model(source, device=device, dtype=dtype)
        config = config or QLLMConfig.default_for(source)
        return cls(model, tokenizer, config=config, progress=progress)

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
        """Tokens of ``text`` in the model's tokenizer."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def answer(self, document: str, question: str, **options: Any) -> Answer:
        """Answer ``question`` about ``document``; see :meth:`stream` for the options."""
        return _drain(self.stream(document, question, **options))

    def stream(
        self, document: str, question: str, *, mode: str | None = None, **options: Any
    ) -> AnswerStream:
        """Stream the answer to ``question`` about ``document``.

        Options: ``max_new_tokens`` (256), ``temperature`` (0: greedy), ``top_p`` (1),
        ``seed``, ``stop`` (strings), ``mode`` (overrides ``config.mode``).
        """
        document = check_text("document", document)
        question = check_text("question", question)
        layout = build_prompt(self.tokenizer, document, question)
        return self._stream(
            layout.input_ids,
            layout.question_span,
            layout.final_question_span[0],
            layout,
            mode,
            options,
        )

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
        ids = [
            int(i)
            for i in (
                input_ids.flatten().tolist() if isinstance(input_ids, torch.Tensor) else input_ids
            )
        ]
        if not ids:
            raise ValueError("input_ids is empty; pass at least one token")
        if question_span is not None and not 0 <= question_span[0] < question_span[1] <= len(ids):
            raise ValueError(
                f"question_span {question_span} does not lie inside the {len(ids)} input tokens"
            )
        record_from = question_span[1] if question_span else len(ids)
        return self._stream(ids, question_span, record_from, None, mode, options)

    def _stream(
        self,
        ids: list[int],
        question_span: tuple[int, int] | None,
        record_from: int,
        layout: PromptLayout | None,
        mode: str | None,
        options: dict[str, Any],
    ) -> AnswerStream:
        config = self.config if mode is None else self.config.replace(mode=mode)
        stop = options.pop("stop", None) or ()
        opts = GenerationOptions(stop=(stop,) if isinstance(stop, str) else tuple(stop), **options)
        if len(ids) > config.max_input_tokens:
            raise InputTooLongError(
                f"the prompt has {len(ids):,} tokens, over max_input_tokens="
                f"{config.max_input_tokens:,}; shorten the document or raise "
                "QLLMConfig.max_input_tokens"
            )
        config = self._resolve_mode(config, len(ids) + opts.max_new_tokens)
        rereads = (
            layout is not None and config.reread_tokens > 0 and config.mode in ("qllm", "infllm")
        )
        if rereads and layout is not None:
            self._check_reread_fits(layout, config, opts.max_new_tokens)
        check_fits(
            len(ids) + opts.max_new_tokens,
            model_config=self.model.config,
            config=config,
            device=self.device,
            dtype=self.dtype,
        )
        stream = AnswerStream(pieces=iter(()))
        plan = RequestPlan(
            question_span=question_span,
            record_from=record_from,
            rank_span=layout.final_question_span if rereads and layout else None,
        )
        stream.pieces = self._run(stream, ids, plan, layout, config, opts)
        return stream

    def _run(
        self,
        stream: AnswerStream,
        ids: list[int],
        plan: RequestPlan,
        layout: PromptLayout | None,
        config: QLLMConfig,
        opts: GenerationOptions,
    ) -> Iterator[str]:
        with self._lock, torch.inference_mode():
            t0 = time.perf_counter()
            step = self.new_forward(config, plan)
            memory = step.memory if isinstance(step, QLLMForward) else None
            logits = self._prefill(step, ids, config)
            passages: list[Passage] = []
            if memory is not None and plan.rank_span is not None and layout is not None:
                passages, step, logits = self._reread(memory, ids, layout, config)
            prefill_seconds = time.perf_counter() - t0
            text = TextAccumulator(self.tokenizer, opts.stop)
            generator = None
            if opts.seed is not None:
                generator = torch.Generator().manual_seed(opts.seed)
            finish: FinishReason = "length"
            generated = 0
            t1 = time.perf_counter()
            while generated < opts.max_new_tokens:
                token = next_token(
                    logits, temperature=opts.temperature, top_p=opts.top_p, generator=generator
                )
                if token in self._eos:
                    finish = "eos"
                    break
                generated += 1
                delta = text.add(token)
                if delta:
                    yield delta
                if text.stopped:
                    finish = "stop"
                    break
                if generated < opts.max_new_tokens:
                    logits = step([token])
            tail = text.flush()
            if tail:
                yield tail
            stats = AnswerStats(
                mode=config.mode,
                tokens_read=len(ids),
                tokens_generated=generated,
                prefill_seconds=prefill_seconds,
                decode_seconds=time.perf_counter() - t1,
                question_found=plan.question_span is not None,
                retrieved_blocks=(
                    _passage_evidence(passages, layout)
                    if passages
                    else _evidence(memory, config, layout)
                ),
                reread_tokens=sum(p.end - p.start for p in passages),
            )
            stream.result = Answer(text=text.text, finish_reason=finish, stats=stats)

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

    def _check_reread_fits(
        self, layout: PromptLayout, config: QLLMConfig, max_new_tokens: int
    ) -> None:
        doc_start, doc_end = layout.document_span
        longest = max_reread_length(
            len(layout.input_ids),
            doc_end - doc_start,
            config.reread_tokens,
            config.block_size,
            len(self._separator),
        )
        window = self.window_tokens(config)
        if longest + max_new_tokens > window:
            raise ConfigError(
                f"the re-read prompt ({longest:,} tokens at most) plus max_new_tokens="
                f"{max_new_tokens:,} exceeds the {window:,}-token window of the model's own "
                "attention; lower QLLMConfig.reread_tokens or max_new_tokens"
            )

    def _reread(
        self, memory: RequestMemory, ids: list[int], layout: PromptLayout, config: QLLMConfig
    ) -> tuple[list[Passage], NativeForward, torch.Tensor]:
        """Second pass: the passages the question attended to most, read with full attention."""
        relevance = memory.block_relevance()
        passages = choose_passages(
            relevance.mean(dim=0) if relevance.numel() else relevance.new_zeros(0),
            document_span=layout.document_span,
            n_init=config.n_init,
            block_size=config.block_size,
            budget=config.reread_tokens,
            margin=config.reread_margin,
        )
        step = NativeForward(self.model)
        reread = reread_ids(ids, passages, layout.document_span, self._separator)
        logits = self._prefill(step, reread, config.replace(mode="full"))
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

    def _prefill(self, step: Forward, ids: list[int], config: QLLMConfig) -> torch.Tensor:
        chunk = config.prefill_chunk_size
        if config.mode == "full":
            chunk = min(chunk, FULL_ATTENTION_CHUNK)
        bar = prefill_progress(len(ids), self.progress)
        try:
            for start in range(0, len(ids), chunk):
                logits = step(ids[start : start + chunk])
                bar.update(min(chunk, len(ids) - start))
        finally:
            bar.close()
        return logits


def _evidence(
    memory: RequestMemory | None, config: QLLMConfig, layout: PromptLayout | None
) -> tuple[RetrievedBlock, ...]:
    """Blocks retrieved while answering and the ``topk`` most relevant, best first.

    Ranked by relevance to the question (:func:`_question_scores`), with document char
    spans and how often each was retrieved while answering.
    """
    if memory is None:
        return ()
    scores = _question_scores(memory)
    best = sorted(range(len(scores)), key=lambda b: -scores[b])[: config.topk]
    chosen = set(memory.counts) | set(best)
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
        logits = torch.einsum("bhd,hd->hb", reprs.float(), layer.question.float())
        rows.append((logits / reprs.shape[-1] ** 0.5).softmax(dim=-1).mean(dim=0))
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
    for _ in stream:
        pass
    assert stream.result is not None
    return stream.result
