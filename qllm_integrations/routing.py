"""Routing: which request a prompt or a chat becomes, decided once for both providers.

- **Route.** Explicit ``question=``/``document=`` first; else a prompt short enough for the
  local window is sent whole in the model's chat template (route :data:`DIRECT`: Q-LLM then
  attends to every token, like the model's own attention); else it is split
  (:mod:`qllm_integrations.split`).
- **Roles.** ``system``, ``user``, ``assistant`` and ``tool``. A tool result is context:
  it is never taken as the question, and in a chat template it is a user turn that says it
  is a tool result (:func:`qllm_core.inputs.prompt.encode_chat`).
- **Side.** :func:`provider_text_request` / :func:`provider_chat_request` are the
  providers' seam: with ``base_url`` the request goes to a quickllama server
  (:mod:`qllm_integrations.remote`), which routes it with these same functions.
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
from qllm_integrations.request import ProviderRequest, Request
from qllm_integrations.settings import CallOptions, ProviderSettings
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
    prompt_text = _prompt_text(prompt, options)
    if not options.explicit and fits_window(engine, prompt_text):
        split_pattern(prompt_text)  # raises for a labelled question without a document
        return _direct(engine, model_name, [("user", prompt_text)], options)
    return split_request(engine, model_name, _text_split(prompt_text, options), options)


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
    return split_request(engine, model_name, _chat_split(turns, options), options)


def provider_text_request(
    settings: ProviderSettings, prompt: object, options: CallOptions
) -> ProviderRequest:
    """The request for a provider's plain prompt: to its server (``base_url``) or local.

    The providers' one seam between the two sides: locally :func:`text_request` over the
    settings' engine; remotely a :class:`~qllm_integrations.remote.RemoteRequest` that the
    server routes the same way, or, reading once a document given explicitly, a question
    about the document's id (:meth:`~qllm_integrations.remote.RemoteClient.document_question`).
    """
    client = settings.remote()
    if client is None:
        return text_request(settings.get_engine(), settings.model_label(), prompt, options)
    prompt_text = _prompt_text(prompt, options)
    if options.read_once and options.explicit:
        split = _text_split(prompt_text, options)
        return client.document_question(settings.model, split, options)
    return client.completion(settings.model, prompt_text, options)


def provider_chat_request(
    settings: ProviderSettings, turns: Sequence[tuple[str, str]], options: CallOptions
) -> ProviderRequest:
    """The request for a provider's chat turns: to its server or local.

    As :func:`provider_text_request`; locally :func:`chat_request`.
    """
    client = settings.remote()
    if client is None:
        return chat_request(settings.get_engine(), settings.model_label(), turns, options)
    if options.read_once and options.explicit:
        checked = [(role, _checked_turn(role, text)) for role, text in turns]
        return client.document_question(settings.model, _chat_split(checked, options), options)
    return client.chat(settings.model, turns, options)


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


def _prompt_text(prompt: object, options: CallOptions) -> str:
    """The prompt checked as text; empty allowed when everything is explicit."""
    if options.explicit and prompt == "":
        return ""
    return check_text("prompt", prompt)


def _text_split(prompt_text: str, options: CallOptions) -> PromptSplit:
    split = split_text(prompt_text, question=options.question, document=options.document)
    return _checked(split)


def _chat_split(turns: Sequence[tuple[str, str]], options: CallOptions) -> PromptSplit:
    """The split of checked turns (a tool result is context, read as an assistant turn)."""
    context = [("assistant" if role == "tool" else role, text) for role, text in turns]
    return _checked(split_chat(context, question=options.question, document=options.document))


def _checked(split: PromptSplit) -> PromptSplit:
    check_text("document", split.document)
    check_text("question", split.question)
    return split


def split_request(
    engine: EngineProtocol, model_name: str, split: PromptSplit, options: CallOptions
) -> Request:
    """The local request answering ``split`` (its document and question already checked)."""
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
