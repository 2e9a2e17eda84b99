"""Haystacks of an exact token length, with sentences planted at chosen depths.

Lengths are counted in tokens of the model's own tokenizer. Cuts and insertions happen at
sentence ends so the prose stays readable.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

_SENTENCE_END = re.compile(r"[.!?]\s+|\n\n")


@dataclass(frozen=True)
class Planted:
    """A document with sentences planted in it; ``spans[i]`` is sentence i's char range."""

    document: str
    spans: tuple[tuple[int, int], ...]


def token_ends(tokenizer: Any, text: str) -> list[int]:
    """Character offset where each token of ``text`` ends (no special tokens)."""
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [end for _, end in encoded["offset_mapping"]]
    # Slow tokenizers have no offsets: decode growing prefixes (only used by odd tokenizers).
    ids = tokenizer.encode(text, add_special_tokens=False)
    return [len(tokenizer.decode(ids[: i + 1])) for i in range(len(ids))]


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens in ``text`` without special tokens."""
    return len(tokenizer.encode(text, add_special_tokens=False))


def fit_tokens(tokenizer: Any, text: str, n_tokens: int) -> str:
    """The longest prefix of ``text`` with at most ``n_tokens`` tokens, cut at a sentence end.

    Falls back to a plain token cut when no sentence ends in the last quarter of the prefix.
    """
    ends = token_ends(tokenizer, text)
    if len(ends) <= n_tokens:
        return text
    cut = ends[n_tokens - 1] if n_tokens > 0 else 0
    boundary = _last_sentence_end(text, cut)
    if boundary >= cut * 3 // 4:
        cut = boundary
    return text[:cut].rstrip()


def plant(tokenizer: Any, haystack: str, needles: list[tuple[float, str]]) -> Planted:
    """Insert each ``(depth, sentence)`` into ``haystack`` at ``depth`` (0.0 start, 1.0 end).

    Depth is measured in tokens of the haystack and snapped to the nearest sentence end.
    """
    ends = token_ends(tokenizer, haystack)
    positions = [_char_at_depth(haystack, ends, depth) for depth, _ in needles]
    order = sorted(range(len(needles)), key=lambda i: (positions[i], i))
    pieces: list[str] = []
    spans: list[tuple[int, int]] = [(0, 0)] * len(needles)
    done = 0
    length = 0
    for i in order:
        before = haystack[done : positions[i]]
        pieces.append(before)
        length += len(before)
        sentence = _spaced(needles[i][1], haystack, positions[i])
        start = length + (len(sentence) - len(sentence.lstrip()))
        spans[i] = (start, start + len(needles[i][1]))
        pieces.append(sentence)
        length += len(sentence)
        done = positions[i]
    pieces.append(haystack[done:])
    return Planted(document="".join(pieces), spans=tuple(spans))


def _char_at_depth(text: str, ends: list[int], depth: float) -> int:
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be within [0, 1], got {depth}")
    if depth == 0.0 or not ends:
        return 0
    if depth == 1.0:
        return len(text)
    index = min(len(ends) - 1, max(0, round(depth * len(ends)) - 1))
    return _nearest_sentence_end(text, ends[index])


def _last_sentence_end(text: str, limit: int) -> int:
    """Offset just after the last sentence end (and its spaces) at or before ``limit``."""
    starts = [match.end() for match in _SENTENCE_END.finditer(text, 0, limit)]
    return starts[bisect.bisect_right(starts, limit) - 1] if starts else 0


def _nearest_sentence_end(text: str, position: int) -> int:
    """The sentence end (offset after it and its spaces) closest to ``position``."""
    starts = [0] + [match.end() for match in _SENTENCE_END.finditer(text)] + [len(text)]
    i = bisect.bisect_left(starts, position)
    candidates = starts[max(0, i - 1) : i + 1]
    return min(candidates, key=lambda start: abs(start - position))


def _spaced(sentence: str, text: str, position: int) -> str:
    """``sentence`` with the spaces it needs to sit at ``text[position]``."""
    before = "" if position == 0 or text[position - 1].isspace() else " "
    after = "" if position >= len(text) or text[position].isspace() else " "
    return before + sentence + after
