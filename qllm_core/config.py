"""The engine's configuration: one frozen, validated dataclass plus named presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .errors import ConfigError
from .modes import MODES, Mode, mode_spec

OFFLOAD_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
ATTENTION_BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")
RANKINGS: tuple[str, ...] = ("mean", "peak", "token_peak")
"""How the re-read reduces the question's attention to one score per block
(:func:`qllm_core.memory.retrieval.block_relevance`)."""


@dataclass(frozen=True, kw_only=True)
class QLLMConfig:
    """Settings of the Q-LLM engine (QuickLLaMA, arXiv 2406.07528).

    Every field is validated on construction; an impossible value raises
    :class:`~qllm_core.errors.ConfigError` naming the field.
    """

    mode: Mode = "auto"
    """``auto`` (``full`` when the prompt plus the answer fits ``full_attention_max_tokens``,
    ``qllm`` beyond); ``qllm``; ``infllm`` (question_weight forced to 0); ``streaming``
    (initial tokens + local window only); ``full`` (the model's own attention)."""
    n_init: int = 128
    """Initial tokens (attention sinks) that every query attends to."""
    n_local: int = 1024
    """Local window: the most recent tokens, attended with relative positions."""
    block_size: int = 128
    """Tokens per memory block."""
    topk: int = 8
    """Memory blocks retrieved per execution block."""
    repr_topk: int = 4
    """Most-attended tokens averaged into a block's representative key."""
    exec_block_size: int = 512
    """Queries processed together, sharing one retrieval."""
    question_weight: float = 4.0
    """beta in score = current . repr + beta * question . repr."""
    max_cached_blocks: int = 32
    """Memory blocks kept on the compute device per layer (LRU)."""
    prefill_chunk_size: int = 8192
    """Tokens per model forward during prefill (bounds FFN activations)."""
    max_batch_size: int = 8
    """Requests whose answers are decoded together, one forward step for all of them
    (continuous batching, :mod:`~qllm_core.answering.scheduler`); more wait for a place.
    1 decodes each request alone."""
    offload_dtype: str | None = None
    """dtype of the host copy of memory blocks (``float16``, ``bfloat16``,
    ``float32``); ``None`` keeps the model's dtype."""
    offload_dir: str | None = None
    """Directory of a disk tier: when set, the host copies of memory blocks live in
    memory-mapped files there (unlinked once mapped, so nothing is left behind), which
    the OS can write out and page back in; for inputs whose keys and values exceed RAM."""
    max_input_tokens: int = 1_048_576
    """Longest prompt accepted; longer inputs raise ``InputTooLongError``."""
    full_attention_max_tokens: int | None = None
    """Longest prompt plus answer that mode ``auto`` runs with the model's own attention;
    ``None``: the model's trained context (``max_position_embeddings``)."""
    reread_tokens: int = 0
    """Two-pass answering (beyond the paper; 0 = off, the paper's single pass). After the
    Q-LLM read, the document passages that drew the most attention from the question's
    queries, up to this many document tokens, are read again, in document order, with the
    model's own attention; the answer is generated from that second read. Must fit the
    model's trained context together with the prompt template and the answer."""
    reread_margin: int = 32
    """Tokens of context added on each side of a block chosen for the re-read, so that a
    sentence cut by a block boundary is read whole."""
    reread_ranking: Literal["mean", "peak", "token_peak"] = "mean"
    """How the re-read ranks memory blocks by the final question's attention over all
    their keys (:func:`~qllm_core.memory.retrieval.block_relevance`, averaged over layers):
    ``mean`` share over heads and question tokens, the ``peak`` share any head and token
    gives, or ``token_peak``, each token's most focused head averaged over tokens."""
    reread_min_tokens: int = 0
    """Sized re-read: document tokens always re-read (when the document has them), however
    the scores fall; see ``reread_score_ratio``. At most ``reread_tokens``; unused (any
    value passes) while ``reread_tokens`` is 0, so that ``reread_tokens=0`` alone turns the
    re-read off in a preset that sizes it."""
    reread_score_ratio: float = 0.0
    """Sized re-read: once ``reread_min_tokens`` are kept, blocks scoring below this
    fraction of the best block's score are left out, so a question whose relevance sits in
    few blocks re-reads fewer tokens than ``reread_tokens`` (0: always fill it)."""
    reread_neighbours: float = 0.0
    """Each block's re-read score gains this share of its two neighbours' scores
    (:func:`~qllm_core.memory.retrieval.with_neighbours`), so that a passage cut by a block
    boundary ranks as a whole; the evidence ranks by the same scores (0: off)."""
    reread_layers: tuple[int, ...] | None = None
    """The model layers (0-based) whose scores the re-read and the evidence average
    (:func:`~qllm_core.memory.retrieval.block_scores`); ``None``: every layer."""
    attention_backend: Literal["auto", "torch", "triton"] = "auto"
    """Kernels of the two-stage attention: ``torch`` (CPU and GPU), ``triton`` (CUDA
    GPUs, needs the ``triton`` extra), or ``auto``: triton on a CUDA device when it is
    installed, torch otherwise."""

    def __post_init__(self) -> None:
        _check(self.mode in MODES, "mode", f"must be one of {MODES}, got {self.mode!r}")
        for name in (
            "n_local",
            "block_size",
            "topk",
            "repr_topk",
            "exec_block_size",
            "max_cached_blocks",
            "prefill_chunk_size",
            "max_input_tokens",
            "max_batch_size",
        ):
            value = getattr(self, name)
            _check(
                _is_int(value) and value >= 1,
                name,
                f"must be an integer >= 1, got {value!r}",
            )
        _check(
            _is_int(self.n_init) and self.n_init >= 0,
            "n_init",
            f"must be an integer >= 0, got {self.n_init!r}",
        )
        _check(
            self.repr_topk <= self.block_size,
            "repr_topk",
            f"({self.repr_topk}) must be <= block_size ({self.block_size}): a block "
            "has only block_size tokens to pick from",
        )
        _check(
            self.exec_block_size <= self.n_local,
            "exec_block_size",
            f"({self.exec_block_size}) must be <= n_local ({self.n_local}): the local "
            "window must cover one execution block; lower exec_block_size or raise n_local",
        )
        _check(
            self.prefill_chunk_size % self.exec_block_size == 0,
            "prefill_chunk_size",
            f"({self.prefill_chunk_size}) must be a multiple of exec_block_size "
            f"({self.exec_block_size}), so that chunked prefill groups queries exactly as "
            "one-shot prefill does",
        )
        _check(
            self.max_cached_blocks >= self.topk,
            "max_cached_blocks",
            f"({self.max_cached_blocks}) must be >= topk ({self.topk}): all retrieved "
            "blocks must fit on the device at once",
        )
        _check(
            self.question_weight >= 0,
            "question_weight",
            f"must be >= 0, got {self.question_weight!r}",
        )
        _check(
            self.offload_dtype is None or self.offload_dtype in OFFLOAD_DTYPES,
            "offload_dtype",
            f"must be None or one of {OFFLOAD_DTYPES}, got {self.offload_dtype!r}",
        )
        _check(
            self.offload_dir is None
            or (isinstance(self.offload_dir, str) and self.offload_dir != ""),
            "offload_dir",
            f"must be None or a directory path, got {self.offload_dir!r}",
        )
        _check(
            self.full_attention_max_tokens is None
            or (_is_int(self.full_attention_max_tokens) and self.full_attention_max_tokens >= 1),
            "full_attention_max_tokens",
            f"must be None or an integer >= 1, got {self.full_attention_max_tokens!r}",
        )
        for name in ("reread_tokens", "reread_margin"):
            value = getattr(self, name)
            _check(_is_int(value) and value >= 0, name, f"must be an integer >= 0, got {value!r}")
        _check(
            self.reread_tokens == 0 or self.reread_tokens >= self.block_size,
            "reread_tokens",
            f"({self.reread_tokens}) must be 0 (off) or at least block_size "
            f"({self.block_size}): the re-read takes whole memory blocks",
        )
        _check(
            self.reread_ranking in RANKINGS,
            "reread_ranking",
            f"must be one of {RANKINGS}, got {self.reread_ranking!r}",
        )
        _check(
            _is_int(self.reread_min_tokens)
            and self.reread_min_tokens >= 0
            and (self.reread_tokens == 0 or self.reread_min_tokens <= self.reread_tokens),
            "reread_min_tokens",
            f"must be an integer from 0 to reread_tokens ({self.reread_tokens}), "
            f"got {self.reread_min_tokens!r}",
        )
        layers = self.reread_layers
        _check(
            layers is None
            or (
                isinstance(layers, tuple)
                and len(layers) > 0
                and all(_is_int(x) and x >= 0 for x in layers)
                and len(set(layers)) == len(layers)
            ),
            "reread_layers",
            f"must be None (every layer) or a non-empty tuple of distinct layer indices "
            f">= 0, got {layers!r}",
        )
        for name in ("reread_score_ratio", "reread_neighbours"):
            value = getattr(self, name)
            _check(
                isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1,
                name,
                f"must be a number from 0 to 1, got {value!r}",
            )
        _check(
            self.attention_backend in ATTENTION_BACKENDS,
            "attention_backend",
            f"must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}",
        )

    @property
    def effective_question_weight(self) -> float:
        """The question weight as used: 0 in ``infllm`` mode, the configured value otherwise."""
        return self.question_weight if mode_spec(self.mode).question_aware else 0.0

    def replace(self, **changes: Any) -> QLLMConfig:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def default_for(cls, source: object | None) -> QLLMConfig:
        """The default config for a model source.

        The ``smollm2`` preset for the embedded model (``None``), the class defaults (the
        published settings) for any other.
        """
        return cls.preset("smollm2") if source is None else cls()

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> QLLMConfig:
        """A named preset (see :data:`PRESETS`), optionally with fields overridden."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name].replace(**overrides)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"QLLMConfig.{field} {message}")


_PUBLISHED = QLLMConfig(
    n_init=128, n_local=1024, block_size=128, topk=8, repr_topk=4, exec_block_size=512
)
_SMALL_WINDOW = _PUBLISHED.replace(n_local=512, block_size=64, question_weight=1.0)

PRESETS: dict[str, QLLMConfig] = {
    # The authors' published settings (the paper's configurations, arXiv 2406.07528).
    "llama3": _PUBLISHED.replace(question_weight=4.0),
    "mistral": _PUBLISHED.replace(question_weight=1.0),
    "small-window": _SMALL_WINDOW,
    # The embedded SmolLM2-135M model (trained context 8K): the published small-window
    # settings at their smaller end (n_local 256, topk 4), with smaller execution blocks and
    # prefill chunks (it read 10K-token inputs ~18% faster than n_local 512 / topk 8 and
    # scored no worse), plus the two-pass re-read: on the paired `standard` comparison
    # (BENCHMARKS.md) the single pass answered almost nothing beyond 4K, while the re-read
    # answered needle and two_hop like full attention in its window. The re-read ranks
    # blocks by their peak share of the question's attention and stops below half the best
    # score once 768 tokens are kept (at most 3072): on the passages benchmark the answer's
    # block came first far more often than under the mean share, with no paired loss.
    "smollm2": _SMALL_WINDOW.replace(
        n_local=256,
        topk=4,
        exec_block_size=256,
        prefill_chunk_size=2048,
        reread_tokens=3072,
        reread_ranking="peak",
        reread_min_tokens=768,
        reread_score_ratio=0.5,
    ),
}
"""Named presets; pick one with :meth:`QLLMConfig.preset`."""
