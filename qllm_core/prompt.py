"""Builds the prompt: question, document, question again, in the model's chat template.

Each piece is tokenized on its own and the token ids are concatenated, so the
question's and the document's token spans are known exactly, with no string search
over the rendered prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_QUESTION = "\x00QLLM-QUESTION\x00"
_DOCUMENT = "\x00QLLM-DOCUMENT\x00"
USER_MESSAGE = (
    "Answer the question using the document below.\n\nQuestion: {question}\n\n"
    "<document>\n{document}\n</document>\n\nQuestion: {question}"
)
"""The user turn; ``{question}`` and ``{document}`` are filled in (question twice)."""
_PLAIN = "{message}\n\nAnswer:"


@dataclass(frozen=True)
class PromptLayout:
    """Token ids of a prompt and where its parts are.

    Spans are ``(start, end)`` token indices, end exclusive. ``document_offsets[i]`` is
    the ``(char_start, char_end)`` of document token ``i`` in the document string, or
    ``None`` when the tokenizer cannot report offsets.
    """

    input_ids: list[int]
    question_span: tuple[int, int]
    document_span: tuple[int, int]
    final_question_span: tuple[int, int]
    document_offsets: list[tuple[int, int]] | None

    def char_span(self, token_start: int, token_end: int) -> tuple[int, int] | None:
        """Characters of the document covered by tokens ``[token_start, token_end)``."""
        doc_start, doc_end = self.document_span
        lo, hi = max(token_start, doc_start), min(token_end, doc_end)
        if self.document_offsets is None or lo >= hi:
            return None
        offsets = self.document_offsets
        return offsets[lo - doc_start][0], offsets[hi - 1 - doc_start][1]


def build_prompt(tokenizer: Any, document: str, question: str) -> PromptLayout:
    """Lay out ``question``, ``document``, ``question`` in the tokenizer's chat template."""
    pieces = _template_pieces(tokenizer)
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    offsets = None
    for i, piece in enumerate(pieces):
        ids += _encode(tokenizer, piece)
        if i == len(pieces) - 1:
            break
        part = question if i != 1 else document
        if i == 1:
            encoded = (
                tokenizer(part, add_special_tokens=False, return_offsets_mapping=True)
                if getattr(tokenizer, "is_fast", False)
                else None
            )
            part_ids = encoded["input_ids"] if encoded else _encode(tokenizer, part)
            offsets = [tuple(o) for o in encoded["offset_mapping"]] if encoded else None
        else:
            part_ids = _encode(tokenizer, part)
        spans.append((len(ids), len(ids) + len(part_ids)))
        ids += part_ids
    return PromptLayout(
        input_ids=ids,
        question_span=spans[0],
        document_span=spans[1],
        final_question_span=spans[2],
        document_offsets=offsets,
    )


def _template_pieces(tokenizer: Any) -> list[str]:
    """The rendered prompt split around its three slots: four strings."""
    message = USER_MESSAGE.format(question=_QUESTION, document=_DOCUMENT)
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
        )
    else:
        bos = tokenizer.bos_token or ""
        rendered = bos + _PLAIN.format(message=message)
    pieces = re.split(f"({re.escape(_QUESTION)}|{re.escape(_DOCUMENT)})", rendered)
    slots, texts = pieces[1::2], pieces[0::2]
    if slots != [_QUESTION, _DOCUMENT, _QUESTION]:
        raise ValueError(
            f"the chat template changed the order of the question and document slots: {slots!r}"
        )
    return texts


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []
