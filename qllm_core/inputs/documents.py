"""Read documents as text and validate the strings the engine is given.

A document is a path, raw bytes, or an open file (binary or text, e.g. ``sys.stdin``).
Anything that is not UTF-8 text is refused with a message saying how to convert it.
"""

from __future__ import annotations

import os
import random
import re
import stat
from typing import Any, BinaryIO, TextIO

from ..errors import EmptyInputError, InvalidDocumentError

DocumentSource = str | os.PathLike[str] | bytes | BinaryIO | TextIO

_SAMPLE_BYTES = 8192
"""How much of a document the binary check looks at."""
_MAX_CONTROL_RATIO = 0.1
"""Share of control characters above which a document counts as binary."""
_TEXT_CONTROLS = frozenset("\t\n\r\f\v\x1b")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_DOCUMENT_BYTES = 2**32
"""Largest document read from a file or stream (4 GiB, about a billion tokens): far over
``max_input_tokens``, and a bound for endless sources such as ``/dev/zero``."""
_READ_CHUNK = 2**20
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
    _refuse_binary(data[:_SAMPLE_BYTES], name)
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
        InvalidDocumentError: ``value`` is not a ``str`` (bytes must be decoded first), or
            holds a NUL character or a lone surrogate (no tokenizer can encode one).
        EmptyInputError: ``value`` is empty or whitespace only.

    """
    if not isinstance(value, str):
        hint = " (decode bytes first, e.g. with qllm_core.inputs.documents.read_document)"
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
    nul = value.find("\x00")
    if nul >= 0:
        raise InvalidDocumentError(
            f"the {name} contains a NUL character (at index {nul}), so it is not text; "
            + _CONVERT_HINT
        )
    surrogate = _LONE_SURROGATE.search(value)
    if surrogate is not None:
        raise InvalidDocumentError(
            f"the {name} contains a lone surrogate {surrogate.group()!r} at index "
            f"{surrogate.start()}, which is not a character (often bytes that are not UTF-8, "
            "decoded with errors='surrogateescape'); decode the source as UTF-8 text first"
        )
    return value


def _read_path(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if stat.S_ISBLK(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode):
                raise InvalidDocumentError(
                    f"{path} is a device or socket, not a text file; pass a regular file or "
                    "pipe the text on standard input"
                )
            return _read_bounded(handle, path)
    except FileNotFoundError:
        raise FileNotFoundError(f"document not found: {path}") from None
    except IsADirectoryError:
        raise InvalidDocumentError(f"{path} is a directory; pass a text file") from None
    except PermissionError:
        raise InvalidDocumentError(f"{path} cannot be read (permission denied)") from None
    except OSError as error:  # e.g. EIO from /proc/self/mem, ENXIO, ELOOP
        raise InvalidDocumentError(
            f"{path} cannot be read: {error.strerror or error}; pass a regular text file"
        ) from None


def _read_bounded(handle: BinaryIO | TextIO, name: str) -> Any:
    """Read all of ``handle`` (bytes or str), refusing binary data at once and over-long input."""
    chunks: list[Any] = []
    size = 0
    while True:
        chunk = handle.read(_READ_CHUNK)
        if not chunk:
            return chunk[:0].join(chunks)
        if not chunks and isinstance(chunk, bytes):  # e.g. /dev/zero is refused at once
            _refuse_binary(chunk[:_SAMPLE_BYTES], name)
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_DOCUMENT_BYTES:
            raise InvalidDocumentError(
                f"{name} is longer than {MAX_DOCUMENT_BYTES:,} bytes; split it, or pass a "
                "shorter document"
            )


def _read_stream(stream: BinaryIO | TextIO) -> str:
    """Read an open file; text streams with bytes underneath (``sys.stdin``) are decoded here."""
    name = _stream_name(stream)
    raw = getattr(stream, "buffer", None)
    source = raw if raw is not None else stream
    try:
        data = _read_bounded(source, name)
    except OSError as error:
        raise InvalidDocumentError(f"{name} cannot be read: {error.strerror or error}") from None
    if isinstance(data, bytes):
        return decode_document(data, name)
    if "\x00" in data:  # an already-decoded text stream, e.g. io.StringIO
        raise InvalidDocumentError(
            f"{name} contains NUL characters, so it is not text; {_CONVERT_HINT}"
        )
    return data


def _refuse_binary(sample: bytes, name: str) -> None:
    if b"\x00" in sample or _control_ratio(sample) > _MAX_CONTROL_RATIO:
        raise InvalidDocumentError(f"{name} looks like binary data, not text; {_CONVERT_HINT}")


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
