"""What an answer shows as its evidence: the document passages the question drew on.

After a Q-LLM read, the memory blocks ranked as the re-read ranks them (and those
retrieved while answering); after a ``full`` read, the document blocks the recorded
question attention ranks highest; after a re-read, its passages. Best first, each with
its token span, document char span and score.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..config import QLLMConfig
from ..inputs.prompt import PromptLayout
from ..memory.retrieval import question_shares
from ..results import RetrievedBlock
from .reread import Passage

if TYPE_CHECKING:
    from ..memory.request import RequestMemory
    from ..models.question_attention import QuestionAttention


def memory_evidence(
    memory: RequestMemory, config: QLLMConfig, layout: PromptLayout | None, *, ranked: bool
) -> tuple[RetrievedBlock, ...]:
    """Blocks retrieved while answering and the ``topk`` most relevant, best first.

    ``ranked`` (the final question's queries were kept): scored as the re-read scores them
    (:meth:`RequestMemory.ranked_scores` under ``config.reread_*``), so the evidence is
    what a re-read would choose; otherwise (a prompt given as ids) by the question vector
    (:func:`question_scores`). With document char spans and how often each block was
    retrieved while answering; blocks of the prompt template (the question before the
    document) are left out when the layout is known.
    """
    if ranked:
        scores = memory.ranked_scores(config).tolist()
    else:
        scores = question_scores(memory)

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


def full_evidence(
    recorder: QuestionAttention, config: QLLMConfig, layout: PromptLayout | None
) -> tuple[RetrievedBlock, ...]:
    """The ``topk`` document blocks the question attended to most in a ``full`` read.

    Scored as the re-read scores memory blocks (``config.reread_*``), over blocks of
    ``block_size`` document tokens; best first.
    """
    scores = recorder.relevance(config).tolist()
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


def question_scores(memory: RequestMemory) -> list[float]:
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


def passage_evidence(
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
