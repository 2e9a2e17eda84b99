"""Where an answer came from: documents joined with their spans, and evidence passages.

The engine reads one text. :func:`join_texts` builds it from several sources and remembers
where each source's text lies (:class:`JoinedText`), so character offsets map back to a
source. :func:`collect_evidence` turns the engine's retrieved blocks into
:class:`Evidence` passages, best first: the blocks most relevant to the question
(``RetrievedBlock.score``) are kept, touching ones merged, clipped to their source and
widened to whole words. Both providers use these; neither has a copy.

Framework-free: imports neither LangChain nor LlamaIndex nor torch.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qllm_core.results import RetrievedBlock

SEPARATOR = "\n\n"
"""Between sources, and between runs of one source."""
_WIDEN_CHARS = 40
"""How far a passage edge may move to reach a word boundary."""


@dataclass(frozen=True)
class Source:
    """One source of a joined text: a document, a file, a page."""

    doc_id: str
    title: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    hidden_keys: tuple[str, ...] = ()
    """Metadata keys not written into the header the model reads."""


@dataclass(frozen=True)
class Piece:
    """A run of one source's text in the joined text.

    ``[start, end)`` in the joined text; it begins at ``source_start`` in the source.
    """

    source: int
    start: int
    end: int
    source_start: int


@dataclass(frozen=True)
class JoinedText:
    """The text the engine reads, its sources, and where each source's text lies in it."""

    text: str
    sources: tuple[Source, ...]
    pieces: tuple[Piece, ...]
    """Sorted by ``start``; headers and separators lie between pieces."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (metadata values JSON cannot hold become strings when dumped)."""
        return {
            "text": self.text,
            "sources": [
                {
                    "doc_id": s.doc_id,
                    "title": s.title,
                    "metadata": dict(s.metadata),
                    "hidden_keys": list(s.hidden_keys),
                }
                for s in self.sources
            ],
            "pieces": [[p.source, p.start, p.end, p.source_start] for p in self.pieces],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JoinedText:
        """The text :meth:`to_dict` described.

        Raises:
            KeyError, TypeError, ValueError: ``data`` is not such a description.
        """
        sources = tuple(
            Source(
                doc_id=str(s["doc_id"]),
                title=str(s["title"]),
                metadata=dict(s["metadata"]),
                hidden_keys=tuple(s["hidden_keys"]),
            )
            for s in data["sources"]
        )
        pieces = tuple(Piece(*(int(v) for v in p)) for p in data["pieces"])
        text = data["text"]
        if not isinstance(text, str) or any(
            not 0 <= p.source < len(sources) or not 0 <= p.start <= p.end <= len(text)
            for p in pieces
        ):
            raise ValueError("a joined text whose pieces do not lie in its text and sources")
        return cls(text, sources, pieces)

    def locate(self, start: int, end: int) -> list[tuple[Piece, int, int]]:
        """The pieces that ``[start, end)`` overlaps, each with the overlap's bounds."""
        starts = [p.start for p in self.pieces]
        index = max(0, bisect.bisect_right(starts, start) - 1)
        found = []
        for piece in self.pieces[index:]:
            if piece.start >= end:
                break
            lo, hi = max(start, piece.start), min(end, piece.end)
            if lo < hi:
                found.append((piece, lo, hi))
        return found


def plain_text(text: str) -> JoinedText:
    """A text of one untitled source, offsets unchanged."""
    return JoinedText(text, (Source("document", "document"),), (Piece(0, 0, len(text), 0),))


def join_texts(
    parts: Sequence[tuple[Source, Sequence[tuple[str, int]]]],
    *,
    headers: bool = False,
    separator: str = SEPARATOR,
) -> JoinedText:
    """Join sources, each given as runs ``(text, source_start)``, into one text.

    Args:
        parts: per source, its runs of text in order (one run for a whole document).
        headers: put ``### title`` and the shown metadata (``key: value``) before each.
        separator: between sources and between runs.
    """
    chunks: list[str] = []
    pieces: list[Piece] = []
    length = 0
    for index, (source, runs) in enumerate(parts):
        lead = _header(source) if headers else ""
        for n, (text, source_start) in enumerate(runs):
            gap = (separator if chunks else "") + (lead if n == 0 else "")
            chunks.append(gap + text)
            pieces.append(
                Piece(index, length + len(gap), length + len(gap) + len(text), source_start)
            )
            length += len(gap) + len(text)
    return JoinedText("".join(chunks), tuple(s for s, _ in parts), tuple(pieces))


def _header(source: Source) -> str:
    lines = [f"### {source.title}"]
    for key, value in source.metadata.items():
        if key not in source.hidden_keys and str(value) != source.title:
            lines.append(f"{key}: {value}")
    return "\n".join(lines) + "\n\n"


@dataclass(frozen=True)
class Evidence:
    """A passage of one source that the model recalled while answering."""

    char_start: int
    """First character, in the source's own text."""
    char_end: int
    """One past the last character."""
    score: float
    """Relevance to the question: the best score among the passage's blocks, as the
    engine's re-read ranks them (``QLLMConfig.reread_ranking``; their share of retrievals
    when there is no question); higher is stronger, and merging never raises it."""
    count: int
    """How often retrieval chose it while answering (summed over layers and steps)."""
    text: str
    """The passage."""
    source: int
    """Index of its source in the joined text."""
    doc_id: str
    title: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """The source's metadata (e.g. ``source``, ``page``)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for tool artifacts, chain outputs and response metadata."""
        return {
            "char_start": self.char_start,
            "char_end": self.char_end,
            "score": round(self.score, 4),
            "count": self.count,
            "text": self.text,
            "source": self.source,
            "doc_id": self.doc_id,
            "title": self.title,
            "metadata": dict(self.metadata),
        }


@dataclass
class _Passage:
    start: int
    end: int
    score: float
    count: int


def collect_evidence(
    joined: JoinedText, blocks: Sequence[RetrievedBlock], *, limit: int = 3
) -> list[Evidence]:
    """The ``limit`` most relevant passages, best first.

    Args:
        joined: the text the engine read (:func:`plain_text` for a single text).
        blocks: ``answer.stats.retrieved_blocks``; blocks of the prompt template
            (``char_start`` is ``None``) give no passage.
        limit: most passages returned (the best blocks are merged where they touch, and a
            passage that spans sources is split per source, the best pieces kept).
    """
    in_text = [
        b
        for b in blocks
        if b.char_start is not None and b.char_end is not None and b.char_end > b.char_start
    ]
    if limit <= 0 or not in_text:
        return []
    weights = _weights(blocks)
    best = sorted(in_text, key=lambda b: -weights[id(b)])[:limit]
    passages: list[_Passage] = []
    for block in sorted(best, key=lambda b: b.char_start or 0):
        start, end = block.char_start or 0, block.char_end or 0
        if passages and start <= passages[-1].end + 1:
            passages[-1].end = max(passages[-1].end, end)
            passages[-1].score = max(passages[-1].score, weights[id(block)])
            passages[-1].count += block.count
        else:
            passages.append(_Passage(start, end, weights[id(block)], block.count))
    evidence = []
    for passage in passages:
        overlapping = joined.locate(passage.start, passage.end)
        covered = sum(hi - lo for _, lo, hi in overlapping)
        for piece, lo, hi in overlapping:
            share = (hi - lo) / covered
            lo, hi = _widen(joined.text, lo, hi, piece)
            evidence.append(_evidence(joined, piece, lo, hi, passage, share))
    return sorted(evidence, key=lambda e: -e.score)[:limit]


def _weights(blocks: Sequence[RetrievedBlock]) -> dict[int, float]:
    """Per block (by ``id``): its score, or its share of retrievals when none has a score."""
    if any(b.score > 0 for b in blocks):
        return {id(b): b.score for b in blocks}
    total = sum(b.count for b in blocks) or 1
    return {id(b): b.count / total for b in blocks}


def _widen(text: str, start: int, end: int, piece: Piece) -> tuple[int, int]:
    """Move ``start`` back and ``end`` forward to word boundaries, inside ``piece``."""
    floor = max(piece.start, start - _WIDEN_CHARS)
    while start > floor and not text[start - 1].isspace():
        start -= 1
    ceiling = min(piece.end, end + _WIDEN_CHARS)
    while end < ceiling and not text[end].isspace():
        end += 1
    return start, end


def _evidence(
    joined: JoinedText, piece: Piece, lo: int, hi: int, passage: _Passage, share: float
) -> Evidence:
    source = joined.sources[piece.source]
    char_start = piece.source_start + lo - piece.start
    return Evidence(
        char_start=char_start,
        char_end=char_start + hi - lo,
        score=passage.score,
        count=round(passage.count * share),
        text=joined.text[lo:hi],
        source=piece.source,
        doc_id=source.doc_id,
        title=source.title,
        metadata=source.metadata,
    )


def format_evidence(evidence: Sequence[Evidence], *, max_chars: int = 300) -> str:
    """Readable lines, one per passage: rank, score, where it is, then a quote."""
    if not evidence:
        return "Evidence: the engine recalled no part of the document beyond its recent text."
    lines = ["Evidence (passages recalled while answering, most relevant first):"]
    for rank, item in enumerate(evidence, 1):
        where = f"characters {item.char_start}-{item.char_end}"
        page = item.metadata.get("page")
        if item.title != "document" or page is not None:
            where = f"{item.title}{f', page {page}' if page is not None else ''}, {where}"
        quote = " ".join(item.text.split())
        if len(quote) > max_chars:
            quote = quote[: max_chars - 3] + "..."
        lines.append(f'[{rank}] score {item.score:.2f}, {where}: "{quote}"')
    return "\n".join(lines)
