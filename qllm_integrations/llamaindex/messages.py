"""Turn LlamaIndex prompts and chat messages into the engine's (document, question) pair.

The split itself lives in :mod:`qllm_integrations.split`, shared with the LangChain provider.
This module only adapts LlamaIndex's types to it:

- :func:`flatten_messages` turns ``ChatMessage`` objects into ``(role, text)`` pairs, with
  ``text/plain`` document blocks as messages of their own;
- :func:`add_template_hint` marks the messages LlamaIndex renders from a prompt template
  (``llm.predict(template, context_str=..., query_str=...)``, which every response
  synthesizer uses) with the template's own ``query_str`` and ``context_str``, so the split
  is exact instead of guessed from the rendered text;
- :func:`split_messages` and :func:`split_prompt` pick the split: explicit arguments first,
  then the template hint, then the shared split functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    DocumentBlock,
    MessageRole,
    TextBlock,
)

from qllm_core.documents import decode_document
from qllm_core.errors import InvalidDocumentError
from qllm_integrations.split import PromptSplit, split_chat, split_text

HINT_KEY = "quickllama_split"
"""``ChatMessage.additional_kwargs`` key under which a template's split is passed along."""

_ROLE_MAP = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    # Tool and function results are context to read, never the question.
    MessageRole.TOOL: "assistant",
    MessageRole.FUNCTION: "assistant",
}
_DOCUMENT_KEYS = ("context_str", "context_msg")
"""Template variables that hold the retrieved text (QA/summary and refine templates)."""


def add_template_hint(
    messages: list[ChatMessage], prompt_args: Mapping[str, Any], prompt_type: str | None
) -> list[ChatMessage]:
    """Attach the template's question and context to the last message (a copy of it).

    Args:
        messages: the messages LlamaIndex rendered from the template.
        prompt_args: the template variables (``query_str``, ``context_str``, ...).
        prompt_type: the template's ``PromptType`` value, e.g. ``"text_qa"``, ``"refine"``.

    Messages are returned unchanged when the template has no string ``query_str``.
    """
    question = prompt_args.get("query_str")
    if not messages or not isinstance(question, str) or not question.strip():
        return messages
    document = next(
        (
            text
            for text in map(_text, (prompt_args.get(k) for k in _DOCUMENT_KEYS))
            if text is not None and text.strip()
        ),
        None,
    )
    last = messages[-1].model_copy(deep=False)
    last.additional_kwargs = {
        **last.additional_kwargs,
        HINT_KEY: {"question": question, "document": document, "prompt_type": prompt_type},
    }
    return [*messages[:-1], last]


def template_hint(messages: Sequence[ChatMessage]) -> dict[str, Any] | None:
    """The hint :func:`add_template_hint` left on the last message, if any."""
    if not messages:
        return None
    hint = messages[-1].additional_kwargs.get(HINT_KEY)
    return hint if isinstance(hint, dict) else None


def flatten_messages(messages: Sequence[ChatMessage]) -> list[tuple[str, str]]:
    """``(role, text)`` pairs for :func:`~qllm_integrations.split.split_chat`.

    Text blocks of one message are joined by newlines; a ``text/plain`` document block
    becomes a message of its own, placed before the rest of its message.

    Raises:
        InvalidDocumentError: a block that is not text (image, audio, PDF, ...); extract
            its text first.

    """
    pairs: list[tuple[str, str]] = []
    for message in messages:
        role = _ROLE_MAP.get(MessageRole(message.role), "user")
        texts: list[str] = []
        for block in message.blocks:
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, DocumentBlock) and _is_plain_text(block):
                raw = block.resolve_document().read()
                pairs.append((role, decode_document(raw, block.title or "document block")))
            else:
                raise InvalidDocumentError(
                    f"a {type(block).__name__} in a {role} message is not text; quickllama "
                    "reads text only: extract the text first and pass it as a TextBlock or "
                    "a text/plain DocumentBlock"
                )
        pairs.append((role, "\n".join(texts)))
    return [(role, text) for role, text in pairs if text.strip()]


def split_messages(
    messages: Sequence[ChatMessage],
    *,
    question: str | None = None,
    document: str | None = None,
) -> PromptSplit:
    """Divide chat messages into the engine's document and question.

    Order: explicit ``question``/``document``; the template hint; the shared
    :func:`split_chat` (which also splits LlamaIndex's "context ... Query: ... Answer:"
    user turns by their pattern).
    """
    if question is None and document is None:
        hint = template_hint(messages)
        hinted = _from_hint(hint)
        if hinted is not None:
            return hinted
        if hint is not None:
            question = hint["question"]
    return split_chat(flatten_messages(messages), question=question, document=document)


def split_prompt(
    prompt: str, *, question: str | None = None, document: str | None = None
) -> PromptSplit:
    """Divide a completion prompt; explicit arguments win over the shared pattern split."""
    return split_text(prompt, question=question, document=document)


def _from_hint(hint: dict[str, Any] | None) -> PromptSplit | None:
    if hint is None or hint.get("document") is None or hint.get("prompt_type") == "refine":
        # A refine prompt also carries the previous answer: split the whole rendered text.
        return None
    return split_text("", question=hint["question"], document=hint["document"])


def _text(value: object) -> str | None:
    """A template variable as text: a string, or a list of strings joined.

    ``simple_summarize`` passes its truncated chunks as a list, which the template itself
    would render as the list's repr.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return None


def _is_plain_text(block: DocumentBlock) -> bool:
    mimetype = block.document_mimetype or ""
    return mimetype.startswith("text/") or mimetype in ("application/json", "application/xml")
