"""Turn the memory blocks the engine retrieved into LlamaIndex source nodes.

Retrieval is the evidence: while answering, Q-LLM recalls the memory blocks most relevant
to the question. The most retrieved blocks are kept; their character spans in the joined
text are mapped back to their source documents, touching blocks are merged into one
passage, and passages are widened to whole words. A passage's score is its share of all
retrievals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llama_index.core.schema import NodeRelationship, NodeWithScore, RelatedNodeInfo, TextNode

from qllm_core.results import RetrievedBlock

from .documents import JoinedDocument, Piece

EVIDENCE_KEYS = ("char_start", "char_end", "retrieval_count", "doc_id", "title")
"""Metadata keys added to every evidence node (hidden from LLMs and embeddings)."""
_WIDEN_CHARS = 40
"""How far a passage edge may move to reach a word boundary."""


@dataclass
class _Passage:
    start: int
    end: int
    count: float


def evidence_nodes(
    joined: JoinedDocument, blocks: Sequence[RetrievedBlock], *, max_sources: int = 4
) -> list[NodeWithScore]:
    """Source nodes for the passages retrieved most, best first.

    Args:
        joined: the text the engine read, with its sources.
        blocks: ``answer.stats.retrieved_blocks``; blocks of the prompt template
            (``char_start`` is ``None``) count towards the total but give no node.
        max_sources: most nodes returned.

    """
    total = sum(block.count for block in blocks)
    if total <= 0 or max_sources <= 0:
        return []
    clipped: list[tuple[Piece, _Passage]] = []
    for passage in _merge(blocks, max_sources):
        overlapping = joined.locate(passage.start, passage.end)
        covered = sum(hi - lo for _, lo, hi in overlapping)
        for piece, lo, hi in overlapping:
            share = passage.count * (hi - lo) / covered
            clipped.append((piece, _Passage(*_widen(joined.text, lo, hi, piece), share)))
    clipped.sort(key=lambda item: -item[1].count)
    return [_node(joined, piece, passage, total) for piece, passage in clipped[:max_sources]]


def _merge(blocks: Sequence[RetrievedBlock], limit: int) -> list[_Passage]:
    """The ``limit`` most retrieved document blocks, merged where they touch, in text order.

    Selecting before merging keeps passages short: a run of blocks that were each
    retrieved a little does not grow into one long passage.
    """
    in_document = [
        b
        for b in blocks
        if b.char_start is not None and b.char_end is not None and b.char_end > b.char_start
    ]
    top = sorted(in_document, key=lambda b: -b.count)[:limit]
    passages: list[_Passage] = []
    for block in sorted(top, key=lambda b: b.char_start or 0):
        start, end = block.char_start or 0, block.char_end or 0
        if passages and start <= passages[-1].end + 1:
            passages[-1].end = max(passages[-1].end, end)
            passages[-1].count += block.count
        else:
            passages.append(_Passage(start, end, block.count))
    return passages


def _widen(text: str, start: int, end: int, piece: Piece) -> tuple[int, int]:
    """Move ``start`` back and ``end`` forward to word boundaries, inside ``piece``."""
    floor = max(piece.start, start - _WIDEN_CHARS)
    while start > floor and not text[start - 1].isspace():
        start -= 1
    ceiling = min(piece.end, end + _WIDEN_CHARS)
    while end < ceiling and not text[end].isspace():
        end += 1
    return start, end


def _node(joined: JoinedDocument, piece: Piece, passage: _Passage, total: int) -> NodeWithScore:
    source = joined.sources[piece.source]
    char_start = piece.source_start + passage.start - piece.start
    char_end = char_start + passage.end - passage.start
    node = TextNode(
        id_=f"{source.doc_id}:{char_start}-{char_end}",
        text=joined.text[passage.start : passage.end],
        metadata={
            **source.metadata,
            "char_start": char_start,
            "char_end": char_end,
            "retrieval_count": round(passage.count, 3),
            "doc_id": source.doc_id,
            "title": source.title,
        },
        excluded_llm_metadata_keys=[*source.excluded_llm_metadata_keys, *EVIDENCE_KEYS],
        excluded_embed_metadata_keys=list(EVIDENCE_KEYS),
        start_char_idx=char_start,
        end_char_idx=char_end,
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=source.doc_id)},
    )
    return NodeWithScore(node=node, score=passage.count / total)
