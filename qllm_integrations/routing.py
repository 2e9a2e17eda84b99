"""Routing: which request a prompt or a chat becomes, decided once for both providers.

- **Route.** Explicit ``question=``/``document=`` first; else a prompt short enough for the
  local window is sent whole in the model's chat template (route :data:`DIRECT`: Q-LLM then
  attends to every token, like the model's own attention); else it is split
  (:mod:`qllm_integrations.split`).
- **Roles.** ``system``, ``user``, ``assistant`` and ``tool``. A tool result is context:
  it is never taken as the question, and in a chat template it is a user turn that says it
  is a tool result (:func:`qllm_core.inputs.prompt.encode_chat`).
- **Input checks.** Prompts, questions and documents go through
  :func:`qllm_core.inputs.documents.check_text`, so non-text and empty input raise the same named
  errors on both sides, before the engine is asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from qllm_core.errors import EmptyInputError
from qllm_core.inputs.documents import check_text
from qllm_core.inputs.prompt import encode_chat
from qllm_core.protocol import EngineProtocol
from qllm_integrations.request import Request
from qllm_integrations.settings import CallOptions
from qllm_integrations.split import PromptSplit, split_chat, split_pattern, split_text

DIRECT: Final = "direct"
"""Route of prompts that fit the local window: sent whole, in the chat template."""

ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")
"""Roles of the turns the providers pass in."""

_SHORT_CHARS_PER_TOKEN = 16
"""No tokenizer packs more characters than this into one token: longer texts skip counting."""


def text_request(
    engine: EngineProtocol, model_name: str, prompt: object, options: CallOptions
) -> Request:
    """The request for a plain prompt.

    Every route refuses an empty document alike: a short prompt whose "Question:" line
    has nothing before it is refused as a long one is (:func:`split_pattern`).

    Raises:
        InvalidDocumentError, EmptyInputError: the prompt is not text, or is empty, or
            holds a question with an empty document.
    """
    if options.explicit and prompt == "":
        prompt_text = ""  # everything is explicit; the prompt may be empty
    else:
        prompt_text = check_text("prompt", prompt)
    if not options.explicit and fits_window(engine, prompt_text):
        split_pattern(prompt_text)  # raises for a labelled question without a document
        return _direct(engine, model_name, [("user", prompt_text)], options)
    split = split_text(prompt_text, question=options.question, document=options.document)
    return _split(engine, model_name, split, options)


def chat_request(
    engine: EngineProtocol,
    model_name: str,
    turns: Sequence[tuple[str, str]],
    options: CallOptions,
) -> Request:
    """The request for chat turns (``(role, text)``, role in :data:`ROLES`).

    Blank turns are left out (an assistant turn that only called tools). When turns
    other than the question are given, they are the document, and all of them blank is
    an empty document, refused on every route (:func:`_check_context`).

    Raises:
        InvalidDocumentError, EmptyInputError: a turn is not text; the question or the
            document is empty.
        ValueError: an unknown role.
    """
    turns = [(role, _checked_turn(role, text)) for role, text in turns]
    if not options.explicit:
        asked = [text for role, text in turns if role == "user"]
        if not asked:
            raise EmptyInputError(
                "the chat has no user message to take the question from; add one, or "
                "pass question= explicitly"
            )
        check_text("question", asked[-1])
        _check_context(turns)
        if fits_window(engine, "\n\n".join(text for _, text in turns)):
            return _direct(engine, model_name, turns, options)
    context = [("assistant" if role == "tool" else role, text) for role, text in turns]
    split = split_chat(context, question=options.question, document=options.document)
    return _split(engine, model_name, split, options)


def fits_window(engine: EngineProtocol, text: str) -> bool:
    """Whether ``text`` fits the local window, where Q-LLM equals full attention."""
    window = engine.config.n_local
    return len(text) <= window * _SHORT_CHARS_PER_TOKEN and engine.count_tokens(text) <= window


def _checked_turn(role: str, text: object) -> str:
    """``text`` checked as a turn's text; blank text counts as none (``""``)."""
    if role not in ROLES:
        raise ValueError(f"unknown chat role {role!r}; expected one of {ROLES}")
    if isinstance(text, str) and not text.strip():
        return ""
    return check_text(f"{role} message", text)


def _check_context(turns: Sequence[tuple[str, str]]) -> None:
    """Refuse a chat whose document is empty, whatever route it would take.

    The document is every turn but the last user message. With such turns, all blank
    (a ``{document}`` template filled with nothing), it is empty; with none, the question
    turn is the whole prompt, refused as a plain prompt is (:func:`split_pattern`).

    Raises:
        EmptyInputError: an empty document.
    """
    last_user = max(i for i, (role, _) in enumerate(turns) if role == "user")
    context = [text for i, (_, text) in enumerate(turns) if i != last_user]
    if not context:
        split_pattern(turns[last_user][1])
    elif not any(context):
        raise EmptyInputError(
            "the document is empty: the messages before the question (system messages, "
            "earlier turns, attached documents) hold no text; put the text to read in "
            "them, or pass document= explicitly"
        )


def _direct(
    engine: EngineProtocol,
    model_name: str,
    turns: Sequence[tuple[str, str]],
    options: CallOptions,
) -> Request:
    ids = encode_chat(engine.tokenizer, [(r, t) for r, t in turns if t.strip()])
    return Request(
        engine,
        model_name,
        DIRECT,
        options.engine_options,
        input_ids=tuple(ids),
        max_evidence=options.max_evidence,
        progress=options.progress,
    )


def _split(
    engine: EngineProtocol, model_name: str, split: PromptSplit, options: CallOptions
) -> Request:
    check_text("document", split.document)
    check_text("question", split.question)
    return Request(
        engine,
        model_name,
        split.route,
        options.engine_options,
        split=split,
        max_evidence=options.max_evidence,
        read_once=options.read_once,
        progress=options.progress,
    )
