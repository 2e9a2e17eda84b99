"""Chat turns to token ids in the model's chat template, with the turns' text kept as text.

The ``direct`` route sends a short conversation whole. Rendering the template with the
user's text inside and tokenizing the result would turn text like ``<|im_start|>`` into the
template's own markers; here the template is rendered around placeholders, its markers are
tokenized as such, and each turn's text is tokenized with special tokens split.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_TOOL_LABEL = "Tool result:\n"
_SLOT = re.compile("\ue000(\\d+)\ue001")


def chat_prompt_ids(tokenizer: Any, turns: Sequence[tuple[str, str]]) -> list[int]:
    """Token ids of the conversation in the tokenizer's chat template, ready to answer.

    The turns' text is tokenized with special tokens split, so text that looks like the
    template's markers (``<|im_start|>``) stays text. Consecutive turns of one role are
    merged (some templates insist on alternation); a template that rejects system turns
    gets them folded into the first user turn. Without a chat template the turns are
    written as ``role: text`` lines.
    """
    merged: list[dict[str, str]] = []
    for role, text in turns:
        if role == "tool":
            role, text = "user", _TOOL_LABEL + text
        if merged and merged[-1]["role"] == role:
            merged[-1]["content"] += "\n\n" + text
        else:
            merged.append({"role": role, "content": text})
    contents = [turn["content"] for turn in merged]
    if not getattr(tokenizer, "chat_template", None):
        rendered = "".join(f"{t['role']}: {_slot(i)}\n" for i, t in enumerate(merged))
        return _tokenize_slots(tokenizer, rendered + "assistant:", contents)
    slotted = [{"role": t["role"], "content": _slot(i)} for i, t in enumerate(merged)]
    try:
        rendered = _render(tokenizer, slotted)
    except Exception:  # jinja's TemplateError and friends: the template refused system turns
        system = [i for i, t in enumerate(merged) if t["role"] == "system"]
        rest = [i for i, t in enumerate(merged) if t["role"] != "system"]
        if not system or not rest or merged[rest[0]]["role"] != "user":
            raise
        first = rest[0]
        contents[first] = "\n\n".join([*(contents[i] for i in system), contents[first]])
        rendered = _render(tokenizer, [slotted[i] for i in rest])
    return _tokenize_slots(tokenizer, rendered, contents)


def _slot(index: int) -> str:
    """A placeholder for a turn's text that no template changes (private-use characters)."""
    return f"\ue000{index}\ue001"


def _render(tokenizer: Any, turns: list[dict[str, str]]) -> str:
    text = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    return str(text)


def _tokenize_slots(tokenizer: Any, rendered: str, contents: Sequence[str]) -> list[int]:
    """Template text tokenized as is; each slot's content with special tokens split."""
    ids: list[int] = []
    at = 0
    for match in _SLOT.finditer(rendered):
        if match.start() > at:
            ids += _ids(tokenizer, rendered[at : match.start()])
        ids += _ids(tokenizer, contents[int(match.group(1))], split_special_tokens=True)
        at = match.end()
    if at < len(rendered):
        ids += _ids(tokenizer, rendered[at:])
    return ids


def _ids(tokenizer: Any, text: str, **kwargs: Any) -> list[int]:
    out = tokenizer(text, add_special_tokens=False, **kwargs)["input_ids"]
    return [int(i) for i in out]
