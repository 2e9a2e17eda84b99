"""Builds the prompt: question, document, question again, in the model's chat template.

Each piece is tokenized on its own and the token ids are concatenated, so the
question's and the document's token spans are known exactly, with no string search
over the rendered prompt.

Text from callers (documents, questions, chat messages) is tokenized with special tokens
split (:func:`encode_text`): ``<|im_start|>`` or ``<|endoftext|>`` inside a document are
ordinary characters, never template structure. Only the template's own pieces are
tokenized with special tokens recognised.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_QUESTION = "\x00QLLM-QUESTION\x00"
_DOCUMENT = "\x00QLLM-DOCUMENT\x00"
USER_MESSAGE = (
    "Answer the question using the document below.\n\nQuestion: {question}\n\n"
    "<document>\n{document}\n</document>\n\nQuestion: {question}"
)
"""The user turn; ``{question}`` and ``{document}`` are filled in (question twice)."""
MEMORY_MESSAGE = (
    "Answer the question using the document below.\n\n"
    "<document>\n{document}\n</document>\n\nQuestion: {question}"
)
"""The user turn of a document read once (:class:`DocumentPrompt`): the question only after
the document, so that everything before it can be read without knowing the question."""
_PLAIN = "{message}\n\nAnswer:"
_SLOT = "\x00QLLM-SLOT-{}\x00"

_TOKENIZER_LOCK = threading.Lock()
"""Fast tokenizers keep "split special tokens" as a setting of the shared backend, changed
by each call that passes it: encoding is serialized so that one call's setting can never
apply to another's text."""


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


@dataclass(frozen=True)
class DocumentPrompt:
    """The prompt of :data:`MEMORY_MESSAGE` up to the end of the document, read once.

    ``input_ids``: the template's start and the document; ``document_span`` and
    ``document_offsets`` as in :class:`PromptLayout`; ``tail``: the template text between
    the document and the question, and after the question.
    """

    input_ids: list[int]
    document_span: tuple[int, int]
    document_offsets: list[tuple[int, int]] | None
    tail: tuple[list[int], list[int]]

    def with_question(self, tokenizer: Any, question: str) -> PromptLayout:
        """The whole prompt with ``question`` after the document (its one question span)."""
        before, after = self.tail
        start = len(self.input_ids) + len(before)
        question_ids = encode_text(tokenizer, question)
        span = (start, start + len(question_ids))
        return PromptLayout(
            input_ids=self.input_ids + before + question_ids + after,
            question_span=span,
            document_span=self.document_span,
            final_question_span=span,
            document_offsets=self.document_offsets,
        )

    def question_first(self, tokenizer: Any, question: str) -> PromptLayout:
        """The per-question prompt of :func:`build_prompt` (question, document, question).

        The same tokens as ``build_prompt`` of the document's text: a re-read after a
        memory lays its passages out as a re-read after a per-question read does.
        """
        doc_start, doc_end = self.document_span
        return layout_prompt(
            tokenizer, self.input_ids[doc_start:doc_end], self.document_offsets, question
        )


def build_document_prompt(tokenizer: Any, document: str) -> DocumentPrompt:
    """Lay out ``document`` in the tokenizer's chat template, for questions to follow it."""
    head, middle, tail = _template_pieces(tokenizer, MEMORY_MESSAGE, [_DOCUMENT, _QUESTION])
    ids = _encode(tokenizer, head)
    document_ids, offsets = encode_text_with_offsets(tokenizer, document)
    return DocumentPrompt(
        input_ids=ids + document_ids,
        document_span=(len(ids), len(ids) + len(document_ids)),
        document_offsets=offsets,
        tail=(_encode(tokenizer, middle), _encode(tokenizer, tail)),
    )


def build_prompt(tokenizer: Any, document: str, question: str) -> PromptLayout:
    """Lay out ``question``, ``document``, ``question`` in the tokenizer's chat template."""
    document_ids, offsets = encode_text_with_offsets(tokenizer, document)
    return layout_prompt(tokenizer, document_ids, offsets, question)


def layout_prompt(
    tokenizer: Any,
    document_ids: list[int],
    offsets: list[tuple[int, int]] | None,
    question: str,
) -> PromptLayout:
    """:func:`build_prompt` of a document already tokenized (``offsets`` as there)."""
    head, middle, after, tail = _template_pieces(
        tokenizer, USER_MESSAGE, [_QUESTION, _DOCUMENT, _QUESTION]
    )
    question_ids = encode_text(tokenizer, question)
    ids = _encode(tokenizer, head)
    spans = []
    for part_ids, text_after in (
        (question_ids, middle),
        (document_ids, after),
        (question_ids, tail),
    ):
        spans.append((len(ids), len(ids) + len(part_ids)))
        ids += part_ids + _encode(tokenizer, text_after)
    return PromptLayout(
        input_ids=ids,
        question_span=spans[0],
        document_span=spans[1],
        final_question_span=spans[2],
        document_offsets=offsets,
    )


def _template_pieces(tokenizer: Any, template: str, order: list[str]) -> list[str]:
    """The rendered prompt of ``template`` split around its slots (one string more).

    The slots must come in ``order``.
    """
    message = template.format(question=_QUESTION, document=_DOCUMENT)
    if getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
        )
    else:
        bos = tokenizer.bos_token or ""
        rendered = bos + _PLAIN.format(message=message)
    pieces = re.split(f"({re.escape(_QUESTION)}|{re.escape(_DOCUMENT)})", rendered)
    slots, texts = pieces[1::2], pieces[0::2]
    if slots != order:
        raise ValueError(
            f"the chat template changed the order of the question and document slots: {slots!r}"
        )
    return texts


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of caller text, special tokens split: never a special-token id for them.

    ``"<|im_start|>"`` in ``text`` becomes the ids of its characters, as if the brackets were
    any other punctuation. Use this for documents, questions and messages.
    """
    return encode_text_with_offsets(tokenizer, text, offsets=False)[0]


def encode_text_with_offsets(
    tokenizer: Any, text: str, *, offsets: bool = True
) -> tuple[list[int], list[tuple[int, int]] | None]:
    """:func:`encode_text`, plus each token's ``(char_start, char_end)``.

    The offsets are ``None`` when not asked for or when the tokenizer cannot report them.
    """
    if not text:
        return [], [] if offsets else None
    with_offsets = offsets and bool(getattr(tokenizer, "is_fast", False))
    with _TOKENIZER_LOCK:
        encoded = tokenizer(
            text,
            add_special_tokens=False,
            split_special_tokens=True,
            return_offsets_mapping=with_offsets,
        )
    ids = list(encoded["input_ids"])
    spans = [(int(a), int(b)) for a, b in encoded["offset_mapping"]] if with_offsets else None
    return ids, spans


TOOL_LABEL = "Tool result:\n"
"""Opens the text of a ``tool`` turn, which templates see as a user turn."""


def encode_chat(
    tokenizer: Any, messages: Sequence[tuple[str, str]], *, add_generation_prompt: bool = True
) -> list[int]:
    """Token ids of ``(role, content)`` messages in the tokenizer's chat template.

    The template's own text is tokenized with special tokens recognised; every message's
    content with :func:`encode_text`, so no message can add or close a turn. Roles are
    those of the template (``system``, ``user``, ``assistant``) and ``tool``: a tool turn
    becomes a user turn that opens with :data:`TOOL_LABEL`. Consecutive turns of one role
    are merged with a blank line (some templates insist on alternation); a template that
    refuses system turns gets them folded into the first user turn. Without a chat
    template, the messages are written as ``role: content`` lines, then ``assistant:``
    when ``add_generation_prompt``.

    Raises:
        ValueError: no messages.
    """
    if not messages:
        raise ValueError("encode_chat needs at least one message")
    roles, contents = _merged_turns(messages)
    slots = [_SLOT.format(i) for i in range(len(roles))]
    if not getattr(tokenizer, "chat_template", None):
        lines = "".join(f"{role}: {slot}\n" for role, slot in zip(roles, slots, strict=True))
        rendered = lines + ("assistant:" if add_generation_prompt else "")
        return _encode_slotted(tokenizer, rendered, slots, contents)
    turns = [{"role": role, "content": slot} for role, slot in zip(roles, slots, strict=True)]
    try:
        rendered = _render_chat(tokenizer, turns, add_generation_prompt)
    except Exception:  # jinja's TemplateError and friends: the template refused system turns
        system = [i for i, role in enumerate(roles) if role == "system"]
        rest = [i for i, role in enumerate(roles) if role != "system"]
        if not system or not rest or roles[rest[0]] != "user":
            raise
        first = rest[0]
        contents[first] = "\n\n".join([*(contents[i] for i in system), contents[first]])
        rendered = _render_chat(tokenizer, [turns[i] for i in rest], add_generation_prompt)
    return _encode_slotted(tokenizer, rendered, slots, contents)


def _merged_turns(messages: Sequence[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Roles and contents of ``messages``: tool turns labelled, runs of one role merged."""
    roles: list[str] = []
    contents: list[str] = []
    for role, content in messages:
        if role == "tool":
            role, content = "user", TOOL_LABEL + content
        if roles and roles[-1] == role:
            contents[-1] += "\n\n" + content
        else:
            roles.append(role)
            contents.append(content)
    return roles, contents


def _render_chat(tokenizer: Any, turns: list[dict[str, str]], add_generation_prompt: bool) -> str:
    rendered = tokenizer.apply_chat_template(
        turns, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return str(rendered)


def _encode_slotted(
    tokenizer: Any, rendered: str, slots: Sequence[str], contents: Sequence[str]
) -> list[int]:
    """Template text with special tokens recognised; each slot's content with them split."""
    pieces = re.split("(" + "|".join(re.escape(slot) for slot in slots) + ")", rendered)
    ids: list[int] = []
    for piece in pieces:
        if piece in slots:
            ids += encode_text(tokenizer, contents[slots.index(piece)])
        else:
            ids += _encode(tokenizer, piece)
    return ids


def encode_template(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a chat template's own text, special tokens recognised.

    Only for text the template wrote; caller text goes through :func:`encode_text`. Both
    hold one lock, so a call of one can never tokenize with the other's setting.
    """
    return _encode(tokenizer, text)


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of the template's own text, special tokens recognised."""
    if not text:
        return []
    with _TOKENIZER_LOCK:
        return list(
            tokenizer(text, add_special_tokens=False, split_special_tokens=False)["input_ids"]
        )
