"""Two-pass answering: choose the passages the question drew attention to, then re-read them.

The Q-LLM read (question, document, question) leaves every memory block's keys in memory.
The final question's queries, scored against all of them, say which blocks the model
itself finds relevant (:meth:`~qllm_core.memory.request.RequestMemory.block_relevance`).
The best blocks, widened by a margin and merged, are laid out in document order in place
of the document, and that shorter prompt is read with the model's own attention: exact,
with true positions, inside the trained window. Tokens the first read held outside memory
blocks (the document's start among the initial tokens, its end in the local window) are
always kept, since they have no block to be scored by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import QLLMConfig
    from ..inputs.prompt import PromptLayout

SEPARATOR = "\n[...]\n"
"""Text placed between passages that are not adjacent in the document."""


@dataclass(frozen=True)
class Passage:
    """Prompt tokens ``[start, end)`` kept for the re-read.

    ``score`` is the best relevance score among the blocks chosen in them (0 for the
    always-kept start and end of the document): merging neighbours never raises it.
    """

    start: int
    end: int
    score: float


@dataclass(frozen=True)
class RereadBudget:
    """How much of the document a re-read keeps (``QLLMConfig.reread_*``).

    At most ``tokens`` document tokens; each chosen block widened by ``margin`` tokens on
    both sides; once ``min_tokens`` are kept, a block scoring below ``ratio`` times the
    best block's score ends the choice (``ratio`` 0: fill the budget).
    """

    tokens: int
    margin: int = 0
    min_tokens: int = 0
    ratio: float = 0.0

    @classmethod
    def of(cls, config: QLLMConfig) -> RereadBudget:
        """The budget ``config`` sets."""
        return cls(
            config.reread_tokens,
            config.reread_margin,
            config.reread_min_tokens,
            config.reread_score_ratio,
        )


def choose_passages(
    relevance: torch.Tensor,
    *,
    document_span: tuple[int, int],
    n_init: int,
    block_size: int,
    budget: RereadBudget,
) -> list[Passage]:
    """Passages of the document to re-read, in document order.

    relevance: (num_blocks,) the question's relevance score per memory block; block
    ``b`` holds prompt tokens ``[n_init + b * block_size, n_init + (b + 1) * block_size)``.
    The document's tokens before the first block and after the last are always kept;
    blocks are then added best first, widened by the budget's margin (clipped to the
    document), while the total stays within the budget (:class:`RereadBudget`).
    """
    margin, min_tokens, ratio = budget.margin, budget.min_tokens, budget.ratio
    doc_start, doc_end = document_span
    kept = bytearray(doc_end - doc_start)  # 1 where a document token is kept
    blocks_end = n_init + relevance.shape[0] * block_size
    for lo, hi in ((doc_start, min(doc_end, n_init)), (max(doc_start, blocks_end), doc_end)):
        kept[max(0, lo - doc_start) : max(0, hi - doc_start)] = b"\x01" * max(0, hi - lo)
    used = sum(kept)
    scores = [0.0] * len(kept)
    floor = ratio * float(relevance.max()) if relevance.numel() else 0.0
    for block in relevance.argsort(descending=True, stable=True).tolist():
        if used >= min_tokens and float(relevance[block]) < floor:
            break
        lo = max(doc_start, n_init + block * block_size - margin) - doc_start
        hi = min(doc_end, n_init + (block + 1) * block_size + margin) - doc_start
        if hi <= lo:
            continue  # a block of the prompt template, not of the document
        new = (hi - lo) - sum(kept[lo:hi])
        if used + new > budget.tokens:
            continue  # a smaller addition (next to a kept block) may still fit
        kept[lo:hi] = b"\x01" * (hi - lo)
        used += new
        for i in range(lo, hi):
            scores[i] = max(scores[i], float(relevance[block]))
    passages, i = [], 0
    while i < len(kept):
        if not kept[i]:
            i += 1
            continue
        j = i
        while j < len(kept) and kept[j]:
            j += 1
        passages.append(Passage(doc_start + i, doc_start + j, max(scores[i:j])))
        i = j
    return passages


def passages_for(
    relevance: torch.Tensor, document_span: tuple[int, int], config: QLLMConfig
) -> list[Passage]:
    """:func:`choose_passages` with the ``reread_*`` settings of ``config``.

    relevance: (num_blocks,) the blocks' scores as ``config`` ranks them
    (:func:`~qllm_core.memory.retrieval.block_scores`).
    """
    return choose_passages(
        relevance,
        document_span=document_span,
        n_init=config.n_init,
        block_size=config.block_size,
        budget=RereadBudget.of(config),
    )


def reread_ids(
    ids: list[int],
    passages: list[Passage],
    document_span: tuple[int, int],
    separator: list[int],
) -> list[int]:
    """``ids`` with the document replaced by ``passages``, ``separator`` between gaps."""
    doc_start, doc_end = document_span
    out = ids[:doc_start]
    previous = doc_start
    for passage in passages:
        if passage.start > previous:
            out += separator
        out += ids[passage.start : passage.end]
        previous = passage.end
    if previous < doc_end:
        out += separator
    return out + ids[doc_end:]


def max_reread_length(
    prompt_tokens: int, document_tokens: int, budget: int, block_size: int, separator: int
) -> int:
    """Upper bound on the length of the re-read prompt (for checking it fits up front)."""
    kept = min(document_tokens, budget)
    gaps = kept // max(1, block_size) + 2
    return prompt_tokens - document_tokens + kept + gaps * separator


def check_reread_fits(
    layout: PromptLayout, config: QLLMConfig, max_new_tokens: int, window: int, separator: int
) -> None:
    """Raise :class:`ConfigError` unless the longest re-read prompt fits with the answer.

    ``window``: tokens the model's own attention reads; ``separator``: the length of
    :data:`SEPARATOR` in tokens.
    """
    doc_start, doc_end = layout.document_span
    longest = max_reread_length(
        len(layout.input_ids),
        doc_end - doc_start,
        config.reread_tokens,
        config.block_size,
        separator,
    )
    if longest + max_new_tokens > window:
        raise ConfigError(
            f"the re-read prompt ({longest:,} tokens at most) plus max_new_tokens="
            f"{max_new_tokens:,} exceeds the {window:,}-token window of the model's own "
            "attention; lower QLLMConfig.reread_tokens or max_new_tokens"
        )


def reread_prompt(
    relevance: torch.Tensor,
    layout: PromptLayout,
    into: PromptLayout,
    config: QLLMConfig,
    separator: list[int],
) -> tuple[list[Passage], list[int]]:
    """The passages to re-read and the re-read prompt.

    Passages are chosen by ``relevance`` ((num_blocks,), :func:`passages_for`) in
    ``layout`` (the prompt read) and returned so; the prompt is ``into`` (the same
    document, perhaps placed elsewhere) with its document replaced by them.
    """
    passages = passages_for(relevance, layout.document_span, config)
    shift = into.document_span[0] - layout.document_span[0]
    moved = [Passage(p.start + shift, p.end + shift, p.score) for p in passages]
    return passages, reread_ids(into.input_ids, moved, into.document_span, separator)
