"""Test engines: a fake QLLMEngine (no torch, no weights) and a real one on a tiny model.

The tiny engine runs a randomly initialized two-layer Llama (seeded, so answers are
reproducible) with the embedded model's tokenizer: it tests plumbing, not answers.

``FakeEngine`` implements :class:`qllm_core.protocol.EngineProtocol` (mypy checks it:
``_fake_conforms`` below), plus ``answer``/``generate``; like the real engine it takes its
lock for each step, never between steps, and returns a real ``AnswerStream``. Its
``memory_for`` keeps :class:`FakeMemory` objects in a dict and lists every document it
reads in ``reads``, so tests can count reads.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tiny_models import TINY_ENGINE_CONFIG, make_tiny_model

from qllm_core.config import QLLMConfig
from qllm_core.errors import ConfigError, InputTooLongError
from qllm_core.inputs.documents import check_text
from qllm_core.models.loading import load_tokenizer
from qllm_core.protocol import EngineProtocol, MemoryProtocol
from qllm_core.results import Answer, AnswerStats, AnswerStream, RetrievedBlock

_WORD = re.compile(r"\s*\S+|\s+")

Reply = str | Callable[[str, str], str]
"""A fixed answer, or a function of (document, question) returning one."""


class FakeTokenizer:
    """Word-level tokenizer: each run of spaces plus a word is one token."""

    chat_template = "{fake}"
    eos_token = "</s>"

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._pieces: list[str] = []
        self._lock = threading.Lock()

    def _id(self, piece: str) -> int:
        with self._lock:
            if piece not in self._ids:
                self._ids[piece] = len(self._pieces)
                self._pieces.append(piece)
            return self._ids[piece]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self._id(p) for p in _WORD.findall(text)]

    def __call__(self, text: str, add_special_tokens: bool = False, **_: Any) -> dict[str, Any]:
        return {"input_ids": self.encode(text)}

    def decode(self, ids: Sequence[int], **_: Any) -> str:
        return "".join(self._pieces[i] for i in ids)

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, str]],
        *,
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        return_dict: bool = True,
        **_: Any,
    ) -> Any:
        text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        if add_generation_prompt:
            text += "<|assistant|>\n"
        if not tokenize:
            return text
        ids = self.encode(text)
        return {"input_ids": ids} if return_dict else ids


@dataclass
class Call:
    """One request the fake engine served."""

    method: str
    document: str | None
    question: str | None
    options: dict[str, Any]
    input_ids: list[int] | None = None
    from_memory: bool = False
    """Whether ``stream`` was given a memory (``document`` is then the memory's text)."""


@dataclass(frozen=True)
class FakeMemory:
    """What ``FakeEngine.memory_for`` returns: the document, its mode and token count."""

    document: str
    mode: str
    tokens: int
    document_sha256: str

    def save(self, path: str | os.PathLike[str]) -> None:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "fake-memory.json"), "w", encoding="utf-8") as file:
            json.dump({"document_sha256": self.document_sha256, "mode": self.mode}, file)


@dataclass
class FakeEngine:
    """Stands in for ``qllm_core.QLLMEngine`` in provider unit tests."""

    reply: Reply = "The answer is forty two, as the document says."
    """What ``answer``/``stream`` say (before stop strings and max_new_tokens apply)."""
    direct_reply: str = "Hello! I am a small fake model."
    """What ``generate``/``stream_ids`` say."""
    model_name: str = "fake-model"
    config: QLLMConfig = TINY_ENGINE_CONFIG
    delay: float = 0.0
    """Seconds to sleep per generated piece (for async / concurrency tests)."""
    read_delay: float = 0.0
    """Seconds ``memory_for`` takes to read a document (for concurrency tests)."""
    loop_gate: threading.Event | None = None
    """If set: before each piece the engine clears it and waits until the event loop sets it
    again (see :func:`keep_gate_open`), so a call that blocks the loop fails instead of
    passing slowly."""
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    calls: list[Call] = field(default_factory=list)
    max_active: int = 0
    """Most requests seen running at once (1 when the lock serializes them)."""
    memories: dict[tuple[str, str | None], FakeMemory] = field(default_factory=dict)
    """``memory_for``'s cache, by (document, mode)."""
    reads: list[str] = field(default_factory=list)
    """Every document ``memory_for`` read (not taken from ``memories``), in order."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0

    @property
    def max_input_tokens(self) -> int:
        return self.config.max_input_tokens

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def answer(self, document: str | FakeMemory, question: str, **options: Any) -> Answer:
        return self.stream(document, question, **options).collect()

    def stream(self, document: str | FakeMemory, question: str, **options: Any) -> AnswerStream:
        check_text("question", question)
        if isinstance(document, FakeMemory):
            if options.get("mode") is not None:
                raise ConfigError(f"mode={options['mode']!r} cannot apply to a document memory")
            memory = document
            self.calls.append(Call("stream", memory.document, question, dict(options), None, True))
            text = self.reply(memory.document, question) if callable(self.reply) else self.reply
            tokens_read = self.count_tokens(question) + 8
            options = {**options, "mode": memory.mode}
            blocks = _blocks(memory.document, question)
            return self._stream(text, tokens_read, blocks, options, memory.tokens)
        check_text("document", document)
        self.calls.append(Call("stream", document, question, dict(options)))
        text = self.reply(document, question) if callable(self.reply) else self.reply
        tokens_read = self.count_tokens(document) + 2 * self.count_tokens(question) + 8
        return self._stream(text, tokens_read, _blocks(document, question), options)

    def memory_for(self, document: str, *, mode: str | None = None) -> tuple[FakeMemory, bool]:
        check_text("document", document)
        memory = self.memories.get((document, mode))
        if memory is not None:
            return memory, True
        tokens = self.count_tokens(document) + 4
        if tokens > self.max_input_tokens:
            raise InputTooLongError(f"the document takes {tokens} tokens")
        self.reads.append(document)
        if self.read_delay:
            time.sleep(self.read_delay)
        digest = hashlib.sha256(document.encode("utf-8", "surrogatepass")).hexdigest()
        memory = FakeMemory(document, mode or self.config.mode, tokens, digest)
        self.memories[(document, mode)] = memory
        return memory, False

    def generate(
        self,
        input_ids: Sequence[int],
        *,
        question_span: tuple[int, int] | None = None,
        **options: Any,
    ) -> Answer:
        return self.stream_ids(input_ids, question_span=question_span, **options).collect()

    def stream_ids(
        self,
        input_ids: Sequence[int],
        *,
        question_span: tuple[int, int] | None = None,
        **options: Any,
    ) -> AnswerStream:
        ids = list(input_ids)
        if not ids:
            raise ValueError("input_ids is empty")
        self.calls.append(Call("stream_ids", None, None, dict(options), ids))
        return self._stream(self.direct_reply, len(ids), (), options)

    def _stream(
        self,
        text: str,
        tokens_read: int,
        blocks: tuple[RetrievedBlock, ...],
        options: dict[str, Any],
        memory_tokens: int = 0,
    ) -> AnswerStream:
        if tokens_read + memory_tokens > self.max_input_tokens:
            raise InputTooLongError(f"{tokens_read} tokens over {self.max_input_tokens}")
        mode = options.get("mode") or self.config.mode

        def cancelled(so_far: str) -> Answer:
            stats = _stats(mode, tokens_read, so_far, 0.0, blocks, memory_tokens)
            return Answer(so_far, "cancelled", stats)

        return AnswerStream(
            self._run(text, tokens_read, blocks, dict(options), mode, memory_tokens),
            cancelled=cancelled,
        )

    def _run(
        self,
        text: str,
        tokens_read: int,
        blocks: tuple[RetrievedBlock, ...],
        options: dict[str, Any],
        mode: str,
        memory_tokens: int = 0,
    ) -> Generator[str, None, Answer]:
        """Like the real engine: the lock is held for each step, never between steps."""
        max_new = options.get("max_new_tokens", 256)
        stops = options.get("stop") or ()
        t0 = time.perf_counter()
        pieces = _WORD.findall(text)
        finish = "eos"
        if len(pieces) > max_new:
            pieces, finish = pieces[:max_new], "length"
        out = ""
        for piece in pieces:
            with self._step():
                cut = _stop_at(out + piece, stops)
                if cut is None:
                    if self.delay:
                        time.sleep(self.delay)
                    if self.loop_gate is not None:
                        self.loop_gate.clear()
                        if not self.loop_gate.wait(timeout=10):
                            raise RuntimeError("the event loop did not run while the engine worked")
            if cut is not None:
                if cut > len(out):
                    yield (out + piece)[len(out) : cut]
                out, finish = (out + piece)[:cut], "stop"
                break
            out += piece
            yield piece
        stats = _stats(mode, tokens_read, out, time.perf_counter() - t0, blocks, memory_tokens)
        return Answer(text=out, finish_reason=finish, stats=stats)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def _step(self) -> Iterator[None]:
        with self._lock:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
            try:
                yield
            finally:
                self._active -= 1


def _stats(
    mode: str,
    tokens_read: int,
    out: str,
    seconds: float,
    blocks: tuple[RetrievedBlock, ...],
    memory_tokens: int = 0,
) -> AnswerStats:
    return AnswerStats(
        mode=mode,
        tokens_read=tokens_read,
        tokens_generated=len(_WORD.findall(out)),
        prefill_seconds=0.001,
        decode_seconds=seconds,
        question_found=bool(blocks),
        retrieved_blocks=blocks,
        memory_tokens=memory_tokens,
    )


def _stop_at(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def _blocks(document: str, question: str) -> tuple[RetrievedBlock, ...]:
    """One block around the first question word (>= 4 letters) found in the document."""
    for word in sorted(re.findall(r"\w{4,}", question), key=len, reverse=True):
        at = document.find(word)
        if at >= 0:
            start, end = max(0, at - 20), min(len(document), at + 60)
            return (
                RetrievedBlock(
                    token_start=20,
                    token_end=36,
                    count=3,
                    char_start=start,
                    char_end=end,
                    score=0.6,
                ),
                RetrievedBlock(token_start=0, token_end=4, count=1, score=0.1),
            )
    return ()


@functools.cache
def tiny_engine() -> Any:
    """The process's one tiny real engine (building it takes a few seconds)."""
    from qllm_core.engine import QLLMEngine

    tokenizer = load_tokenizer()
    model = make_tiny_model("llama", vocab_size=len(tokenizer))
    return QLLMEngine(model, tokenizer, config=TINY_ENGINE_CONFIG)


@functools.cache
def tiny_model_dir(seed: int = 1) -> str:
    """A tiny random model saved as a transformers directory (removed at exit)."""
    path = tempfile.mkdtemp(prefix=f"qllm-tiny-{seed}-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    tokenizer = load_tokenizer()
    make_tiny_model("llama", vocab_size=len(tokenizer), seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


async def keep_gate_open(gate: threading.Event) -> None:
    """Set ``gate`` on every turn of the event loop: the loop's proof that it is running."""
    while True:
        gate.set()
        await asyncio.sleep(0.001)


def _fake_conforms(engine: FakeEngine) -> EngineProtocol:
    return engine  # mypy fails here when the fake drifts from the protocol


def _fake_memory_conforms(memory: FakeMemory) -> MemoryProtocol:
    return memory
