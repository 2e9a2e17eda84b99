"""Flatten LangChain messages into the ``(role, text)`` pairs that the splitter reads."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)

_SKIPPED_BLOCKS = frozenset(
    {"reasoning", "thinking", "tool_call", "tool_call_chunk", "invalid_tool_call", "tool_use"}
)
"""Blocks of assistant turns that are not text the model should re-read."""


def flatten_messages(messages: Sequence[BaseMessage]) -> list[tuple[str, str]]:
    """``(role, text)`` pairs, role in ``system``/``user``/``assistant``.

    A ``text-plain`` content block (a document attached to a message) becomes a pair of
    its own, placed before the rest of its message, so that the splitter sees it as
    context and the message's own text as the question.

    Raises:
        ValueError: on content the model cannot read (images, audio, files).
    """
    pairs: list[tuple[str, str]] = []
    for message in messages:
        role = _role(message)
        attached, own = _texts(message.content)
        pairs.extend((role, text) for text in attached)
        pairs.append((role, own))
    return pairs


def _role(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, HumanMessage | ToolMessage):
        return "user"
    if isinstance(message, ChatMessage):
        role = message.role.lower()
        return (
            {"human": "user", "ai": "assistant", "developer": "system"}.get(role, role)
            if role in ("human", "ai", "developer", "system", "user", "assistant")
            else "user"
        )
    return "user"


def _texts(content: str | list[Any]) -> tuple[list[str], str]:
    """Attached ``text-plain`` documents, and the message's own text."""
    if isinstance(content, str):
        return [], content
    attached: list[str] = []
    own: list[str] = []
    for block in content:
        if isinstance(block, str):
            own.append(block)
            continue
        kind = block.get("type")
        if kind == "text":
            own.append(block.get("text", ""))
        elif kind == "text-plain":
            attached.append(_plain_text(block))
        elif kind in _SKIPPED_BLOCKS:
            continue
        else:
            raise ValueError(
                f"quickllama models read text only; got a {kind!r} content block. Pass "
                "documents as text (a 'text-plain' block or a plain string)"
            )
    return attached, "".join(own)


def _plain_text(block: dict[str, Any]) -> str:
    if "text" in block:
        return str(block["text"])
    data = block.get("base64") or block.get("data")
    if isinstance(data, str):
        try:
            return base64.b64decode(data).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as error:
            raise ValueError(
                f"a 'text-plain' block's base64 data is not UTF-8 text: {error}"
            ) from error
    raise ValueError(f"a 'text-plain' block needs 'text' (or 'base64'); got keys {sorted(block)}")


def chat_prompt_ids(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> list[int]:
    """Token ids of the conversation in the tokenizer's chat template, ready to answer.

    Consecutive turns of one role are merged (some templates insist on alternation); a
    template that rejects system turns gets them folded into the first user turn. Without
    a chat template the turns are written as ``role: text`` lines.
    """
    turns: list[dict[str, str]] = []
    for role, text in pairs:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + text
        else:
            turns.append({"role": role, "content": text})
    if not getattr(tokenizer, "chat_template", None):
        lines = [f"{t['role']}: {t['content']}" for t in turns] + ["assistant:"]
        return list(tokenizer("\n".join(lines))["input_ids"])
    try:
        return _templated(tokenizer, turns)
    except Exception:  # jinja's TemplateError and friends: the template refused system turns
        system = "\n\n".join(t["content"] for t in turns if t["role"] == "system")
        rest = [t for t in turns if t["role"] != "system"]
        if not system or not rest or rest[0]["role"] != "user":
            raise
        rest[0] = {"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}
        return _templated(tokenizer, rest)


def _templated(tokenizer: Any, turns: list[dict[str, str]]) -> list[int]:
    out = tokenizer.apply_chat_template(
        turns, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    ids = out["input_ids"] if not isinstance(out, list) else out
    return [int(i) for i in ids]
