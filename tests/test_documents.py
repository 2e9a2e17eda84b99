"""Reading documents: paths, bytes, streams; refusing binary, non-UTF-8 and empty input."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from qllm_core.errors import EmptyInputError, InvalidDocumentError
from qllm_core.inputs.documents import (
    check_text,
    decode_document,
    read_document,
    synthetic_document,
)


def test_reads_utf8_path_with_multibyte_characters(tmp_path: Path) -> None:
    text = "Zoë paid 5 € for crème brûlée; 東京 is far; emoji 🚢 too.\nSecond line.\n"
    path = tmp_path / "doc.txt"
    path.write_bytes(text.encode("utf-8"))
    assert read_document(path) == text
    assert read_document(str(path)) == text


def test_bytes_and_bom() -> None:
    assert read_document("héllo".encode()) == "héllo"
    assert read_document(b"\xef\xbb\xbfhello") == "hello"


def test_nul_bytes_are_binary(tmp_path: Path) -> None:
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(InvalidDocumentError, match="binary") as info:
        read_document(path)
    assert str(path) in str(info.value)
    assert "UTF-8" in str(info.value)


def test_many_control_characters_are_binary() -> None:
    data = b"text" + b"\x01\x02\x03\x04\x05" * 10 + b"more text"
    with pytest.raises(InvalidDocumentError, match="binary"):
        decode_document(data)


def test_tabs_and_newlines_are_text() -> None:
    data = b"a\tb\r\nc\n" * 100
    assert decode_document(data) == data.decode()


def test_non_utf8_gives_offset_and_fix() -> None:
    data = "caf\N{LATIN SMALL LETTER E WITH ACUTE} au lait".encode("latin-1")
    with pytest.raises(InvalidDocumentError) as info:
        read_document(data)
    message = str(info.value)
    assert "offset 3" in message
    assert "0xe9" in message
    assert "iconv" in message
    assert "PDF" in message


@pytest.mark.parametrize("data", [b"", b"   \n\t  \r\n"])
def test_empty_and_whitespace_documents(data: bytes) -> None:
    with pytest.raises(EmptyInputError, match="document"):
        read_document(data)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_document(missing)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidDocumentError, match="directory"):
        read_document(tmp_path)


def test_stdin_like_text_stream_is_decoded_strictly() -> None:
    good = io.TextIOWrapper(io.BytesIO("naïve ünïcödé".encode()), encoding="utf-8")
    assert read_document(good) == "naïve ünïcödé"
    bad = io.TextIOWrapper(io.BytesIO(b"\xff\xfe bad"), encoding="utf-8")
    with pytest.raises(InvalidDocumentError, match="offset 0"):
        read_document(bad)


def test_binary_and_string_streams() -> None:
    assert read_document(io.BytesIO("ok ✓".encode())) == "ok ✓"
    assert read_document(io.StringIO("plain")) == "plain"
    with pytest.raises(InvalidDocumentError):
        read_document(io.StringIO("a\x00b"))
    with pytest.raises(EmptyInputError):
        read_document(io.StringIO("  "))


def test_check_text() -> None:
    assert check_text("question", "Why?") == "Why?"
    with pytest.raises(EmptyInputError, match="question"):
        check_text("question", "")
    with pytest.raises(EmptyInputError, match="question.*whitespace"):
        check_text("question", " \n ")
    with pytest.raises(InvalidDocumentError, match="document must be a str, got bytes.*decode"):
        check_text("document", b"bytes")
    with pytest.raises(InvalidDocumentError, match="got NoneType"):
        check_text("document", None)


def test_synthetic_document_is_deterministic_and_plants_the_fact() -> None:
    fact = "The pass key is 123."
    first = synthetic_document(20_000, seed=3, fact=fact, at=0.5)
    assert first == synthetic_document(20_000, seed=3, fact=fact, at=0.5)
    assert first != synthetic_document(20_000, seed=4, fact=fact, at=0.5)
    assert 20_000 <= len(first) < 22_000
    assert first.count(fact) == 1
    assert 0.4 < first.index(fact) / len(first) < 0.6
    assert decode_document(first.encode()) == first  # passes our own text checks
