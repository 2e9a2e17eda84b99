"""Message content as the engine reads it, the same for LangChain and LlamaIndex.

Each provider walks its framework's content blocks and asks this module what they
become, so one input gives one result on both sides:

- a message's text blocks are joined with :data:`BLOCK_SEPARATOR` (a newline, so two
  blocks never run into one word);
- an attached text document (LangChain ``text-plain`` or a ``file`` block with a text
  MIME type; LlamaIndex a ``DocumentBlock`` with one) is decoded as UTF-8 (a BOM dropped)
  by :func:`attached_text` and becomes a turn of its own, before the rest of its message;
- anything else that carries data (an image, audio, a PDF) is refused with
  :class:`~qllm_core.errors.InvalidDocumentError` by :func:`not_text`.

This module imports neither LangChain nor LlamaIndex nor torch.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

from qllm_core.errors import InvalidDocumentError
from qllm_core.inputs.documents import check_text, decode_document

BLOCK_SEPARATOR = "\n"
"""Between the text blocks of one message."""

_TEXT_TYPES = ("application/json", "application/xml")
"""MIME types read as text besides ``text/*``."""


def join_blocks(texts: Sequence[str]) -> str:
    """A message's own text from its text blocks, in order."""
    return BLOCK_SEPARATOR.join(texts)


def is_text_mimetype(mimetype: str | None) -> bool:
    """Whether a document of this MIME type is text the engine can read."""
    kind = (mimetype or "").split(";")[0].strip().lower()
    return kind.startswith("text/") or kind in _TEXT_TYPES


def attached_text(data: object, name: str = "attached document") -> str:
    """An attached document's text: ``data`` decoded as UTF-8 when bytes, then checked.

    Raises:
        InvalidDocumentError: binary or non-UTF-8 data, a NUL character, or neither text
            nor bytes.
        EmptyInputError: the document is empty or whitespace only.
    """
    if isinstance(data, bytes | bytearray):
        data = decode_document(bytes(data), name)
    return check_text(name, data)


def decode_base64(data: str, name: str = "attached document") -> bytes:
    """The bytes of base64 ``data``.

    Raises:
        InvalidDocumentError: ``data`` is not base64.
    """
    try:
        return base64.b64decode(data)
    except (binascii.Error, ValueError) as error:
        raise InvalidDocumentError(
            f"the {name}'s data is not valid base64 ({error}); pass the text itself, or "
            "its UTF-8 bytes base64-encoded"
        ) from error


def not_text(kind: str, role: str) -> InvalidDocumentError:
    """The error for a content block the engine cannot read (image, audio, PDF, ...)."""
    return InvalidDocumentError(
        f"a {kind} block in a {role} message is not text; quickllama reads text only: "
        "extract the text first and pass it as text, or as a text/plain document block"
    )
