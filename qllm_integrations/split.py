r"""Split a prompt into the document to read and the question to answer.

Q-LLM needs the question's span, but frameworks hand over one flat prompt (or a list of
chat messages). The resolution order, shared by the LangChain and LlamaIndex providers:

1. ``explicit``: ``question=`` / ``document=`` given by the caller;
2. ``chat``: the last user message is the question; system messages, earlier messages
   and ``text-plain`` blocks (flattened by the caller into earlier messages) are the
   document;
3. ``pattern``: a prompt ending in "Question: ...", "Query: ..." or "Q: ...", optionally
   followed by an "Answer:" cue (LlamaIndex's templates end "Query: {query_str}\nAnswer:");
4. ``tail``: the last resort; a bounded tail of the prompt (its last paragraph or sentence,
   at most :data:`MAX_TAIL_CHARS` characters) is the question. This warns with
   :class:`QuestionNotFoundWarning`.

Nothing of the caller's text is dropped: ``document`` and ``question`` together cover the
prompt, except the labels and the "Answer:" cue. For the ``pattern`` and ``tail`` routes
``document`` is a prefix of the prompt, so character offsets into it (as in
``RetrievedBlock.char_start``) are offsets into the prompt as well.

This module is framework-free: it imports neither LangChain nor LlamaIndex nor torch.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from qllm_core.errors import EmptyInputError

Route = Literal["explicit", "chat", "pattern", "tail"]

MAX_TAIL_CHARS = 500
"""Longest question the ``tail`` route takes from the end of a prompt."""

MAX_PATTERN_QUESTION_CHARS = 4000
"""A "Question:" label followed by more text than this is not taken as the question."""

_ROLES = ("system", "user", "assistant")

# A label at the start of a line: "Question:", "Query:", "Q:", also as "**Question:**".
_LABEL = re.compile(r"(?im)^[ \t>*#_]*(?:question|query|q)[ \t*_]*:[ \t*_]*")
# An answer cue closing the prompt: "Answer:", "Helpful Answer:", "A:" on their own line.
_CUE = re.compile(
    r"(?i)\n[ \t>*#_]*(?:(?:helpful|final|short)[ \t]+)?(?:answer|a)[ \t*_]*:[ \t*_]*\Z"
)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f][\"')\]]*\s+")


class QuestionNotFoundWarning(UserWarning):
    """No question could be told apart from the document; the prompt's tail was used.

    Pass ``question=`` (and ``document=``) explicitly, or end the prompt with a
    "Question: ..." line, to silence it.
    """


@dataclass(frozen=True)
class PromptSplit:
    """A prompt divided into the document to read and the question about it."""

    document: str
    """The text to read (everything but the question)."""
    question: str
    """What to answer; Q-LLM uses its vectors to choose which memory blocks to recall."""
    route: Route
    """How the split was found: ``explicit``, ``chat``, ``pattern`` or ``tail``."""


def split_text(
    prompt: str, *, question: str | None = None, document: str | None = None
) -> PromptSplit:
    """Split a plain prompt into document and question.

    Args:
        prompt: the whole prompt as the framework rendered it.
        question: the question, when the caller knows it (then the prompt is the document,
            unless ``document`` is given as well).
        document: the document, when the caller knows it (then the prompt is the question,
            unless ``question`` is given as well).

    Raises:
        EmptyInputError: when the document or the question would be empty.
    """
    if question is not None or document is not None:
        return _explicit(prompt, question=question, document=document)
    found = split_pattern(prompt)
    if found is not None:
        return found
    tail = split_tail(prompt)
    warnings.warn(
        f"no 'Question:' or 'Query:' line found; using the prompt's last "
        f"{len(tail.question)} characters as the question. Pass question= (and "
        "document=) to say which part is the question.",
        QuestionNotFoundWarning,
        stacklevel=2,
    )
    return tail


def split_chat(
    messages: Sequence[tuple[str, str]],
    *,
    question: str | None = None,
    document: str | None = None,
) -> PromptSplit:
    """Split chat messages into document and question.

    Args:
        messages: ``(role, text)`` pairs, role in ``system``, ``user``, ``assistant``, in
            conversation order. Framework message types and ``text-plain`` content blocks
            are flattened into these by the caller (a ``text-plain`` block becomes a
            message of its own before the rest of its message).
        question: the question, when the caller knows it; the messages become the document.
        document: the document, when the caller knows it; the last user message is the
            question and earlier messages are put before the document.

    The last user message is the question, and everything before it (system messages,
    earlier turns) is the document, with each earlier message on its own paragraph. With
    no earlier messages, the last user message is split like a plain prompt
    (:func:`split_text`); when it ends in a "Question:"/"Query:" line (chat templates that
    put the context in the user turn), only that line is the question and the text before
    it joins the document. Messages after the last user message stay in the document.

    Raises:
        EmptyInputError: when the document or the question would be empty.
        ValueError: on an unknown role.
    """
    for role, _ in messages:
        if role not in _ROLES:
            raise ValueError(f"unknown chat role {role!r}; expected one of {_ROLES}")
    if question is not None:
        return _explicit(_join(m for _, m in messages), question=question, document=document)
    last_user = max((i for i, (role, _) in enumerate(messages) if role == "user"), default=None)
    if last_user is None:
        if document is not None:
            return _explicit(_join(m for _, m in messages), document=document)
        raise EmptyInputError(
            "the chat has no user message to take the question from; add one, or pass "
            "question= explicitly"
        )
    asked = messages[last_user][1]
    context = _join(m for i, (_, m) in enumerate(messages) if i != last_user)
    if document is not None:
        return _explicit(asked, document=_join([context, document]))
    if not context.strip():
        return split_text(asked)
    if not asked.strip():
        raise EmptyInputError("the last user message is empty; it should hold the question")
    found = split_pattern(asked)  # e.g. LlamaIndex's "Context ... Query: ...\nAnswer:" turn
    if found is not None:
        return PromptSplit(
            document=_join([context, found.document]), question=found.question, route="chat"
        )
    return PromptSplit(document=context, question=asked.strip(), route="chat")


def split_pattern(prompt: str) -> PromptSplit | None:
    """The ``pattern`` route alone: a prompt ending "Question: ..." (or Query:, Q:).

    Returns ``None`` when the prompt does not end that way.

    Raises:
        EmptyInputError: when the label is found but nothing comes before it.
    """
    cue = _CUE.search(prompt)
    body = prompt[: cue.start()] if cue else prompt
    labels = list(_LABEL.finditer(body))
    if not labels:
        return None
    label = labels[-1]
    asked = body[label.end() :].strip()
    if not asked or len(asked) > MAX_PATTERN_QUESTION_CHARS:
        return None
    document = body[: label.start()].rstrip()
    if not document.strip():
        raise EmptyInputError(
            "the document is empty: the prompt holds a question but no text before it; put "
            "the text to read before the 'Question:' line, or pass document= explicitly"
        )
    return PromptSplit(document=document, question=asked, route="pattern")


def split_tail(prompt: str, *, max_chars: int = MAX_TAIL_CHARS) -> PromptSplit:
    """The ``tail`` route alone (without the warning): the prompt's tail is the question.

    The tail is the last paragraph if it is at most ``max_chars`` long, else the last
    sentence, else the last ``max_chars`` characters cut at a space. The tail never
    covers the whole prompt: some document must remain.

    Raises:
        EmptyInputError: when the prompt is empty or too short to hold both a document
            and a question (a single sentence).
    """
    text = prompt.rstrip()
    if not text.strip():
        raise EmptyInputError("the prompt is empty; nothing to read and nothing to answer")
    for start in _tail_starts(text, max_chars):
        document = text[:start].rstrip()
        asked = text[start:].strip()
        if document.strip() and asked:
            return PromptSplit(document=document, question=asked, route="tail")
    raise EmptyInputError(
        "the prompt is a single sentence: it cannot be split into a document and a "
        "question; pass document= (the text to read) or question= explicitly"
    )


def _tail_starts(text: str, max_chars: int) -> list[int]:
    """Candidate start offsets of the question, best first."""
    starts = []
    breaks = list(_PARAGRAPH_BREAK.finditer(text))
    if breaks and len(text) - breaks[-1].end() <= max_chars:
        starts.append(breaks[-1].end())
    window_start = max(0, len(text) - max_chars)
    ends = [m.end() for m in _SENTENCE_END.finditer(text, window_start) if m.end() < len(text)]
    if ends:
        starts.append(ends[-1])
    if len(text) > max_chars:
        space = text.find(" ", window_start)
        starts.append(space + 1 if 0 <= space < len(text) - 1 else window_start)
    return starts


def _explicit(
    prompt: str, *, question: str | None = None, document: str | None = None
) -> PromptSplit:
    """Resolve explicit arguments; the prompt fills whichever of the two is missing."""
    if question is None:
        question = prompt
    elif document is None:
        document = prompt
    else:
        # Both given: any other text in the prompt is an instruction that belongs to
        # the question (it is kept, not dropped).
        extra = prompt.strip()
        if extra and extra not in (question.strip(), document.strip()):
            question = _join([extra, question])
    assert document is not None
    if not document.strip():
        raise EmptyInputError("the document is empty; pass the text to read as document=")
    if not question.strip():
        raise EmptyInputError("the question is empty; pass what to answer as question=")
    return PromptSplit(document=document, question=question.strip(), route="explicit")


def _join(texts: Iterable[str]) -> str:
    """Non-empty texts, one paragraph each."""
    return "\n\n".join(t for t in texts if t.strip())
