"""Where in the document an answer came from: the engine's retrieved blocks, as text spans.

The engine reports every memory block it recalled while answering, with the block's
character range in the document (``RetrievedBlock.char_start``/``char_end``) and how often
it was chosen. This module turns those into :class:`Evidence` spans, maps them back to
the LangChain ``Document`` they fall in when several were joined, and formats them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Evidence:
    """A stretch of the document the model recalled while answering."""

    char_start: int
    """First character, in the text given to the engine."""
    char_end: int
    """One past the last character."""
    count: int
    """How often retrieval chose it (summed over layers and steps): higher is stronger."""
    text: str
    """The characters themselves."""
    source: int | None = None
    """Index of the joined ``Document`` it lies in, when documents were joined."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """That ``Document``'s metadata (e.g. ``source``, ``page``)."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, for tool artifacts and chain outputs."""
        return {
            "char_start": self.char_start,
            "char_end": self.char_end,
            "count": self.count,
            "text": self.text,
            "source": self.source,
            "metadata": dict(self.metadata),
        }


def join_texts(texts: Sequence[str], separator: str = "\n\n") -> tuple[str, list[tuple[int, int]]]:
    """``texts`` joined by ``separator``, and each one's ``(start, end)`` in the result."""
    spans = []
    at = 0
    for i, text in enumerate(texts):
        if i:
            at += len(separator)
        spans.append((at, at + len(text)))
        at += len(text)
    return separator.join(texts), spans


def collect_evidence(
    blocks: Sequence[Mapping[str, Any]],
    document: str,
    *,
    spans: Sequence[tuple[int, int]] | None = None,
    metadata: Sequence[Mapping[str, Any]] | None = None,
    limit: int = 3,
) -> list[Evidence]:
    """The ``limit`` most-chosen document blocks, overlapping ones merged, in document order.

    Args:
        blocks: ``response_metadata["qllm"]["retrieved_blocks"]`` (most chosen first);
            blocks without a character range (prompt template text) are skipped.
        document: the text the engine read.
        spans: per joined document, its ``(start, end)`` in ``document`` (:func:`join_texts`).
        metadata: per joined document, its metadata.
        limit: most blocks to keep.
    """
    chosen = [b for b in blocks if b.get("char_start") is not None][: max(limit, 0)]
    merged: list[list[int]] = []
    for b in sorted(chosen, key=lambda b: b["char_start"]):
        if merged and b["char_start"] <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b["char_end"])
            merged[-1][2] += b["count"]
        else:
            merged.append([b["char_start"], b["char_end"], b["count"]])
    evidence = []
    for start, end, count in merged:
        source = _source_of(start, spans) if spans is not None else None
        meta = metadata[source] if metadata is not None and source is not None else {}
        evidence.append(
            Evidence(
                char_start=start,
                char_end=end,
                count=count,
                text=document[start:end],
                source=source,
                metadata=meta,
            )
        )
    return evidence


def format_evidence(evidence: Sequence[Evidence], *, max_chars: int = 300) -> str:
    """Readable lines, one per span: where it is, then a quote of it."""
    if not evidence:
        return "Evidence: the engine recalled no part of the document beyond its recent text."
    lines = ["Evidence (parts of the document recalled while answering):"]
    for i, item in enumerate(evidence, 1):
        where = f"characters {item.char_start}-{item.char_end}"
        if item.source is not None:
            label = item.metadata.get("source", f"document {item.source}")
            page = item.metadata.get("page")
            where = f"{label}{f', page {page}' if page is not None else ''}, {where}"
        quote = " ".join(item.text.split())
        if len(quote) > max_chars:
            quote = quote[: max_chars - 3] + "..."
        lines.append(f'[{i}] {where}: "{quote}"')
    return "\n".join(lines)


def _source_of(char: int, spans: Sequence[tuple[int, int]]) -> int | None:
    for i, (start, end) in enumerate(spans):
        if start <= char < end or (start == end == char):
            return i
    # a block starting inside a separator belongs to the next document
    return next((i for i, (start, _) in enumerate(spans) if start > char), None)
