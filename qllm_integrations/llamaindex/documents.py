"""Join LlamaIndex documents (or chunked nodes) into the one text the engine reads.

Each source gets a short header (its title and the metadata LlamaIndex shows LLMs). Chunks
of the same source, as node parsers make them, are stitched back together without their
overlaps. The result is the provider core's :class:`~qllm_integrations.evidence.JoinedText`,
which remembers where every source's text sits, so the engine's character offsets map back
to a source and an offset in it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from llama_index.core.schema import BaseNode, MetadataMode

from qllm_integrations.evidence import SEPARATOR, JoinedText, Source, join_texts

logger = logging.getLogger(__name__)

TITLE_KEYS = ("title", "file_name", "filename", "source", "url")
"""Metadata keys tried, in order, for a source's title."""
_MIN_OVERLAP = 16
"""Shortest suffix/prefix match taken as a chunk overlap when positions are unknown."""
_MAX_OVERLAP = 8192
"""Longest overlap looked for between chunks without positions."""


def join_documents(nodes: Sequence[BaseNode], *, headers: bool = True) -> JoinedText:
    """Join ``nodes`` (Documents, or chunks of them) into one text, sources in first-seen order.

    Chunks sharing a source document (``ref_doc_id``) are stitched by their
    ``start_char_idx``/``end_char_idx`` when known, else by their longest overlapping
    suffix/prefix; exact duplicates are dropped. With ``headers``, each source starts with
    its title and the metadata LlamaIndex shows LLMs.
    """
    groups: dict[str, list[BaseNode]] = {}
    for node in nodes:
        groups.setdefault(node.ref_doc_id or node.node_id, []).append(node)
    parts = [(_source(doc_id, group[0]), _stitch(group)) for doc_id, group in groups.items()]
    return join_texts(parts, headers=headers)


def _source(doc_id: str, node: BaseNode) -> Source:
    metadata = dict(node.metadata)
    title = next((str(metadata[k]) for k in TITLE_KEYS if metadata.get(k)), doc_id)
    return Source(
        doc_id=doc_id,
        title=title,
        metadata=metadata,
        hidden_keys=tuple(node.excluded_llm_metadata_keys),
    )


def _stitch(group: list[BaseNode]) -> list[tuple[str, int]]:
    """The source's text as runs ``(text, source_start)``, overlaps removed."""
    chunks = _unique([(n.get_content(metadata_mode=MetadataMode.NONE), n) for n in group])
    if len(chunks) == 1:
        return [(chunks[0][0], _span(chunks[0][1])[0] or 0)]
    if all(_has_position(text, node) for text, node in chunks):
        return _stitch_by_position(chunks)
    return _stitch_by_overlap([text for text, _ in chunks])


def _unique(chunks: list[tuple[str, BaseNode]]) -> list[tuple[str, BaseNode]]:
    seen: set[tuple[str, int | None]] = set()
    kept = []
    for text, node in chunks:
        key = (text, _span(node)[0])
        if key in seen:
            logger.debug("dropped a duplicate chunk of %s", node.ref_doc_id or node.node_id)
            continue
        seen.add(key)
        kept.append((text, node))
    return kept


def _has_position(text: str, node: BaseNode) -> bool:
    start, end = _span(node)
    return start is not None and end is not None and end - start == len(text)


def _span(node: BaseNode) -> tuple[int | None, int | None]:
    """The node's ``(start_char_idx, end_char_idx)`` in its source (Documents have none)."""
    return getattr(node, "start_char_idx", None), getattr(node, "end_char_idx", None)


def _stitch_by_position(chunks: list[tuple[str, BaseNode]]) -> list[tuple[str, int]]:
    runs: list[tuple[str, int]] = []
    covered = -1
    for text, node in sorted(chunks, key=lambda c: _span(c[1])):
        start, end = _span(node)
        assert start is not None and end is not None
        if end <= covered:
            continue
        if runs and start <= covered:
            previous, previous_start = runs[-1]
            runs[-1] = (previous + text[covered - start :], previous_start)
        else:
            runs.append((text, start))
        covered = end
    return runs


def _stitch_by_overlap(texts: list[str]) -> list[tuple[str, int]]:
    runs = [(texts[0], 0)]
    for text in texts[1:]:
        previous, previous_start = runs[-1]
        overlap = _overlap(previous, text)
        if overlap:
            runs[-1] = (previous + text[overlap:], previous_start)
        else:
            runs.append((text, previous_start + len(previous) + len(SEPARATOR)))
    return runs


def _overlap(left: str, right: str) -> int:
    """Length of the longest suffix of ``left`` that is a prefix of ``right`` (or 0)."""
    for size in range(min(len(left), len(right), _MAX_OVERLAP), _MIN_OVERLAP - 1, -1):
        if left.endswith(right[:size]):
            return size
    return 0
