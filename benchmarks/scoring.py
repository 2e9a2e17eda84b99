"""Strict, automatic scoring: every expected value must appear verbatim in the answer."""

from __future__ import annotations

import re
from collections.abc import Sequence


def found(value: str, answer: str) -> bool:
    """``value`` occurs in ``answer`` as a whole token (case-insensitive).

    "71432" is not found in "714321": a longer number is a different answer.
    """
    pattern = rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])"
    return re.search(pattern, answer, flags=re.IGNORECASE) is not None


def score(expected: Sequence[str], answer: str) -> bool:
    """True when every expected value is found in ``answer``."""
    return all(found(value, answer) for value in expected)


def overlaps(span: tuple[int, int], start: int | None, end: int | None) -> bool:
    """Whether char range ``[start, end)`` overlaps ``span`` (``None`` bounds never do)."""
    if start is None or end is None:
        return False
    return start < span[1] and span[0] < end
