"""Hand-written questions over real long documents that ship in Debian packages.

The ``realdoc`` task asks short factual questions about five plain-text documents from the
Debian packages ``debian-policy`` 4.6.2.0 and ``developers-reference`` 12.18 (install them
with ``apt-get install debian-policy developers-reference``): the machine-readable
debian/copyright format (about 9K tokens), the Policy upgrading checklist (17K), the
Filesystem Hierarchy Standard 3.0 (28K), the Developer's Reference (76K) and the Debian
Policy Manual (120K). Nothing is downloaded: the documents are read from ``/usr/share``
and checked against the SHA-256 recorded in ``realdocs.json``.

The questions, in ``realdocs.json``, were written by hand from the texts and follow rules:

- the answer is a short exact string (a number, a path, a name, a command, a version)
  that appears verbatim in the document and cannot be guessed without reading it;
- it occurs at most three times in its document (case-insensitive, whole token, as
  ``scoring.found`` matches it), and one passage of at most 300 characters around it,
  recorded as ``evidence`` with its character offsets, answers the question;
- the question paraphrases that passage and has one right answer in the document;
- the answers are spread over the beginning, middle and end of each document.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .tasks import Sample

REALDOCS_FILE = Path(__file__).with_name("realdocs.json")


class MissingDocumentError(RuntimeError):
    """A document is not installed, or is not the version the questions were written for."""


@functools.lru_cache(maxsize=1)
def realdocs() -> dict[str, Any]:
    """The parsed ``realdocs.json``: its ``documents`` and ``questions``."""
    data: dict[str, Any] = json.loads(REALDOCS_FILE.read_text(encoding="utf-8"))
    return data


def load_document(name: str) -> str:
    """The decompressed text of document ``name``, checked against its recorded hash."""
    documents = realdocs()["documents"]
    if name not in documents:
        raise ValueError(f"unknown document {name!r}; choose from {sorted(documents)}")
    info = documents[name]
    wanted = f"{info['package']} {info['version']}"
    path = Path(info["path"])
    if not path.is_file():
        raise MissingDocumentError(
            f"{path} is missing: run `apt-get install debian-policy developers-reference` "
            f"(the questions on {name!r} were written for {wanted})"
        )
    data = gzip.decompress(path.read_bytes())
    if hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise MissingDocumentError(
            f"{path} is not the text the questions on {name!r} were written for: "
            f"they need the package {wanted}"
        )
    return data.decode("utf-8")


def real_samples(tokenizer: Any, names: Sequence[str] | None = None) -> list[Sample]:
    """One ``realdoc`` sample per question on ``names`` (default: every document).

    ``length`` is the document's length in tokens of ``tokenizer``; samples are ordered by
    that length, then by question id.
    """
    data = realdocs()
    chosen = list(data["documents"]) if names is None else list(names)
    texts = {name: load_document(name) for name in chosen}
    lengths = {
        name: len(tokenizer(text, add_special_tokens=False).input_ids)
        for name, text in texts.items()
    }
    samples = []
    for item in data["questions"]:
        name = item["document"]
        if name not in texts:
            continue
        text = texts[name]
        samples.append(
            Sample(
                task="realdoc",
                sample_id=item["id"],
                length=lengths[name],
                depth=round(item["char_start"] / len(text), 3),
                document=text,
                question=item["question"],
                expected=(item["answer"],),
                evidence=((item["char_start"], item["char_end"]),),
                max_new_tokens=48,
            )
        )
    return sorted(samples, key=lambda sample: (sample.length, sample.sample_id))
