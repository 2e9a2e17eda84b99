"""Read documents as text and validate the strings the engine is given.

A document is a path, raw bytes, or an open file (binary or text, e.g. ``sys.stdin``).
Anything that is not UTF-8 text is refused with a message saying how to convert it.
"""

from __future__ import annotations

import os
import random
from typing import BinaryIO, TextIO

from .errors import EmptyInputError, InvalidDocumentError

DocumentSource = str | os.PathLike[str] | bytes | BinaryIO | TextIO

_SAMPLE_BYTES = 8192
"""How much of a document the binary check looks at."""
_MAX_CONTROL_RATIO = 0.1
"""Share of control characters above which a document counts as binary."""
_TEXT_CONTROLS = frozenset("\t\n\r\f\v\x1b")
_CONVERT_HINT = (
    "convert it to UTF-8 text first (e.g. `iconv -f LATIN1 -t UTF-8 FILE > FILE.txt`), "
    "or extract the text of a PDF or office file first (e.g. `pdftotext FILE.pdf`)"
)


def read_document(source: DocumentSource) -> str:
    """Return the text of ``source``: a file path, bytes, or an open binary/text file.

    A ``str`` is always taken as a path; pass document text to the engine directly.

    Raises:
        FileNotFoundError: the path does not exist.
        InvalidDocumentError: binary data, or bytes that are not valid UTF-8.
        EmptyInputError: the document is empty or whitespace only.

    """
    name = "document"
    if isinstance(source, bytes):
        text = decode_document(source, name)
    elif isinstance(source, str | os.PathLike):
        name = os.fspath(source)
        text = decode_document(_read_path(name), name)
    else:
        text = _read_stream(source)
    return check_text("document", text)


def decode_document(data: bytes, name: str = "document") -> str:
    """Decode ``data`` as UTF-8 text (a leading BOM is dropped).

    Raises:
        InvalidDocumentError: ``data`` looks binary or is not valid UTF-8; the message gives
            the offending byte offset and how to convert the file.

    """
    if b"\x00" in data[:_SAMPLE_BYTES] or _control_ratio(data[:_SAMPLE_BYTES]) > _MAX_CONTROL_RATIO:
        raise InvalidDocumentError(f"{name} looks like binary data, not text; {_CONVERT_HINT}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidDocumentError(
            f"{name} is not valid UTF-8 (byte 0x{data[error.start]:02x} at offset "
            f"{error.start}); {_CONVERT_HINT}"
        ) from error
    if "\x00" in text:
        raise InvalidDocumentError(
            f"{name} contains NUL characters, so it is not text; {_CONVERT_HINT}"
        )
    return text


def check_text(name: str, value: object) -> str:
    """Validate a document or question string and return it unchanged.

    Args:
        name: what the value is, for messages (``"document"`` or ``"question"``).
        value: the value to check.

    Raises:
        InvalidDocumentError: ``value`` is not a ``str`` (bytes must be decoded first).
        EmptyInputError: ``value`` is empty or whitespace only.

    """
    if not isinstance(value, str):
        hint = " (decode bytes first, e.g. with qllm_core.documents.read_document)"
        raise InvalidDocumentError(
            f"the {name} must be a str, got {type(value).__name__}"
            + (hint if isinstance(value, bytes | bytearray) else "")
        )
    if not value.strip():
        raise EmptyInputError(
            f"the {name} is empty"
            + ("" if not value else " (whitespace only)")
            + f"; pass a non-empty {name}"
        )
    return value


def _read_path(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"document not found: {path}") from None
    except IsADirectoryError:
        raise InvalidDocumentError(f"{path} is a directory; pass a text file") from None


def _read_stream(stream: BinaryIO | TextIO) -> str:
    """Read an open file; text streams with bytes underneath (``sys.stdin``) are decoded here."""
    name = _stream_name(stream)
    raw = getattr(stream, "buffer", None)
    data = (raw if raw is not None else stream).read()
    if isinstance(data, bytes):
        return decode_document(data, name)
    if "\x00" in data:  # an already-decoded text stream, e.g. io.StringIO
        raise InvalidDocumentError(
            f"{name} contains NUL characters, so it is not text; {_CONVERT_HINT}"
        )
    return data


def _stream_name(stream: object) -> str:
    name = getattr(stream, "name", None)
    if isinstance(name, str) and name and not name.startswith("<"):
        return name
    return "standard input" if name in ("<stdin>", 0) else "the input"


def _control_ratio(sample: bytes) -> float:
    """Share of ASCII control characters, other than common whitespace, in ``sample``."""
    if not sample:
        return 0.0
    controls = sum(
        1 for byte in sample if (byte < 32 or byte == 127) and chr(byte) not in _TEXT_CONTROLS
    )
    return controls / len(sample)


_PEOPLE = (
    "the miller's widow",
    "a young surveyor",
    "the harbour master",
    "old Captain Breck",
    "the schoolmistress",
    "two fishermen from the north shore",
    "the village doctor",
    "a travelling clockmaker",
    "the mayor's clerk",
    "the innkeeper",
    "a retired sea pilot",
    "the blacksmith's apprentice",
    "the parish priest",
    "a botanist from the capital",
)
_ACTIONS = (
    "carried the ledger across",
    "walked slowly along",
    "wrote a long letter about",
    "argued for an hour about",
    "drew a careful map of",
    "repaired the lamps of",
    "sold salted herring near",
    "planted a row of pear trees beside",
    "told stories about",
    "counted the ships anchored off",
    "kept a quiet watch over",
    "painted the shutters of",
)
_PLACES = (
    "the old stone bridge",
    "the harbour office",
    "the chapel on the hill",
    "the salt marsh",
    "the lighthouse",
    "the market square",
    "the mill race",
    "the customs house",
    "the northern breakwater",
    "the orchard behind the school",
    "the rope walk",
    "the ferry landing",
    "the granary",
    "the cliff path",
)
_TIMES = (
    "In the spring of {year}",
    "One foggy morning in {year}",
    "Late in the autumn of {year}",
    "During the long winter of {year}",
    "On a market day in {year}",
    "Early in {year}",
    "That summer",
    "A week later",
    "By the end of the month",
    "Some years afterwards",
)
_AFTERTHOUGHTS = (
    "and nobody in the town thought it unusual.",
    "while the gulls circled overhead.",
    "because the tide had turned early that day.",
    "as the church bell rang for noon.",
    "though the weather was against it.",
    "and the newspaper mentioned it the next day.",
    "before the first snow closed the mountain road.",
    "while the children watched.",
    "and the account of it survives in the parish records.",
    "as the fog lifted over the bay.",
)


def synthetic_document(n_chars: int, *, seed: int = 0, fact: str = "", at: float = 0.5) -> str:
    """Deterministic chronicle-style prose of about ``n_chars`` characters.

    Args:
        n_chars: approximate length (paragraphs are added until it is reached).
        seed: the random seed; the same arguments always give the same text.
        fact: a sentence planted as its own paragraph, e.g. a pass key for a needle test.
        at: where the fact goes, as a fraction of the document (0 = start, 1 = end).

    """
    rng = random.Random(seed)
    paragraphs: list[str] = []
    length = 0
    while length < n_chars:
        paragraph = " ".join(_sentence(rng) for _ in range(rng.randint(3, 7)))
        paragraphs.append(paragraph)
        length += len(paragraph) + 2
    if fact:
        paragraphs.insert(round(at * len(paragraphs)), fact)
    return "\n\n".join(paragraphs) + "\n"


def _sentence(rng: random.Random) -> str:
    when = rng.choice(_TIMES).format(year=rng.randint(1820, 1910))
    who, what, where = rng.choice(_PEOPLE), rng.choice(_ACTIONS), rng.choice(_PLACES)
    return f"{when}, {who} {what} {where} {rng.choice(_AFTERTHOUGHTS)}"
