"""Guard rails: notice when LlamaIndex would split, re-pack or truncate QLLM's context.

Q-LLM reads a whole text in one call and picks its evidence itself. Some of LlamaIndex's
response synthesizers defeat that:

- ``refine`` and ``accumulate`` call the LLM once per retrieved chunk: no call sees the
  whole text, whatever the context window;
- ``compact``, ``compact_accumulate``, ``tree_summarize`` and ``simple_summarize`` pack the
  text into the window of their ``PromptHelper``. That is one call when the helper was made
  from QLLM's metadata, but a stale ``Settings.prompt_helper`` (made for another LLM, or a
  small ``Settings.context_window``) splits the text or truncates it silently.

:class:`~qllm_integrations.llamaindex.llm.QLLM` runs :func:`check_call` on every templated
call and warns (:class:`ContextSplitWarning`, once per QLLM) or raises
(:class:`ContextSplitError`) by its ``guard`` setting when a refine prompt reaches it;
:func:`check_query_engine` and :func:`check_settings` check a pipeline up front, prompt
helpers included. The recipe is in ``docs/llamaindex.md``.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from llama_index.core.indices.prompt_helper import PromptHelper
from llama_index.core.response_synthesizers import (
    Accumulate,
    CompactAndRefine,
    Refine,
    SimpleSummarize,
    TreeSummarize,
)
from llama_index.core.response_synthesizers.compact_and_accumulate import CompactAndAccumulate
from llama_index.core.settings import Settings

from qllm_core.errors import QLLMError
from qllm_integrations.settings import ProviderSettings

GuardPolicy = Literal["warn", "raise", "off"]
"""What a guard does on a problem: warn, raise :class:`ContextSplitError`, or nothing."""

FIX = (
    "Fix: read whole documents with quickllama's WholeDocumentQueryEngine.from_documents(docs) "
    "(or document_tool(docs) for agents); in a retrieval pipeline use "
    "response_mode='compact' or 'simple_summarize' with a PromptHelper made for QLLM: "
    "`Settings.prompt_helper = PromptHelper.from_llm_metadata(llm.metadata)` or "
    "`Settings.context_window = llm.metadata.context_window`. See docs/llamaindex.md."
)

_MODES: tuple[tuple[type, str], ...] = (
    # Subclasses before their base classes.
    (CompactAndRefine, "compact"),
    (CompactAndAccumulate, "compact_accumulate"),
    (Refine, "refine"),
    (Accumulate, "accumulate"),
    (SimpleSummarize, "simple_summarize"),
    (TreeSummarize, "tree_summarize"),
)
_PER_CHUNK = {
    "refine": "calls the LLM once per retrieved chunk and refines the answer chunk by chunk",
    "accumulate": "answers once per retrieved chunk and concatenates the answers",
}
_WINDOWED = {
    "compact": "split across several calls and refined",
    "compact_accumulate": "split across several calls",
    "tree_summarize": "split and summarized in a tree of calls",
    "simple_summarize": "truncated",
}


class ContextSplitError(QLLMError, RuntimeError):
    """LlamaIndex would split, re-pack or truncate the text before QLLM reads it."""


class ContextSplitWarning(UserWarning):
    """LlamaIndex would split, re-pack or truncate the text before QLLM reads it."""


def response_mode(synthesizer: object) -> str | None:
    """The ``response_mode`` name of a synthesizer (``None`` for modes that are safe)."""
    for cls, mode in _MODES:
        if isinstance(synthesizer, cls):
            return mode
    return None


def prompt_helper_problem(
    helper: PromptHelper | None, context_window: int, where: str
) -> str | None:
    """A message when ``helper`` packs text into fewer tokens than ``context_window``."""
    if helper is None or helper.context_window >= context_window:
        return None
    return (
        f"{where} has context_window={helper.context_window} tokens but QLLM reads up "
        f"to {context_window} tokens in one call"
    )


def synthesizer_problems(synthesizer: object, context_window: int) -> list[str]:
    """What ``synthesizer`` would do to QLLM's context, one message per problem."""
    mode = response_mode(synthesizer)
    if mode in _PER_CHUNK:
        return [f"response_mode={mode!r} {_PER_CHUNK[mode]}, so no call sees the whole text"]
    if mode in _WINDOWED:
        helper = getattr(synthesizer, "_prompt_helper", None)
        problem = prompt_helper_problem(
            helper, context_window, f"the {mode!r} synthesizer's PromptHelper"
        )
        if problem is not None:
            return [
                f"{problem}: the retrieved text would be {_WINDOWED[mode]} (a stale "
                "Settings.prompt_helper or a small Settings.context_window)"
            ]
    return []


def check_call(prompt_type: str | None, policy: GuardPolicy, warned: set[str]) -> list[str]:
    """Check one templated call by its template's type, warning once per ``warned`` set.

    A ``refine`` template reaching QLLM means the text was split into chunks read one call
    at a time. Each QLLM passes its own ``warned`` set, so a query engine's refine chain
    warns once, not once per chunk. (Windowed modes with a stale prompt helper are only
    visible up front: :func:`check_query_engine`, :func:`check_settings`.)
    """
    if policy == "off" or prompt_type != "refine":
        return []
    problems = [
        "a refine prompt reached QLLM: the text was split into chunks that are read one "
        "call at a time (response_mode='refine', or 'compact' with a small window)"
    ]
    if policy == "warn" and "refine" in warned:
        return problems
    warned.add("refine")
    enforce(problems, policy, stacklevel=4)
    return problems


def check_query_engine(query_engine: Any, *, policy: GuardPolicy = "raise") -> list[str]:
    """Check a query engine (e.g. ``index.as_query_engine(llm=QLLM())``) before use.

    Only synthesizers whose LLM is a QLLM are checked. Returns the problems found, after
    warning or raising by ``policy``.
    """
    synthesizer = getattr(query_engine, "_response_synthesizer", None) or getattr(
        query_engine, "response_synthesizer", None
    )
    llm = getattr(synthesizer, "_llm", None)
    problems = []
    if isinstance(llm, ProviderSettings):
        problems = synthesizer_problems(synthesizer, llm.max_input_tokens())
    enforce(problems, policy, stacklevel=3)
    return problems


def check_settings(llm: Any = None, *, policy: GuardPolicy = "warn") -> list[str]:
    """Check that ``Settings.prompt_helper`` does not shrink the QLLM of ``Settings.llm``.

    ``llm`` defaults to ``Settings.llm`` (:func:`configured_llm`). Only a QLLM that is
    ``Settings.llm`` is checked: reading ``Settings.prompt_helper`` makes LlamaIndex install
    one built from ``Settings.llm`` when none is set, which for that QLLM is the right one,
    and for another LLM would shrink the window of every later query engine.
    """
    configured = configured_llm()
    llm = llm if llm is not None else configured
    problems = []
    if isinstance(llm, ProviderSettings) and llm is configured:
        problem = prompt_helper_problem(
            Settings.prompt_helper, llm.max_input_tokens(), "Settings.prompt_helper"
        )
        problems = [problem] if problem else []
    enforce(problems, policy, stacklevel=3)
    return problems


def configured_llm() -> object | None:
    """``Settings.llm``, or ``None`` when none is set and LlamaIndex has no default.

    With no LLM set, LlamaIndex resolves its default (OpenAI, when
    ``llama-index-llms-openai`` and an API key are there) and keeps it, as it does for any
    component that asks; without them it raises, and there is no LLM.
    """
    try:
        return Settings.llm
    except (ImportError, ValueError):
        return None


def enforce(problems: list[str], policy: GuardPolicy, *, stacklevel: int = 2) -> None:
    """Warn about or raise on ``problems`` (nothing when empty or ``policy`` is ``off``)."""
    if not problems or policy == "off":
        return
    message = "LlamaIndex would not give QLLM the whole text: " + "; ".join(problems) + ". " + FIX
    if policy == "raise":
        raise ContextSplitError(message)
    warnings.warn(message, ContextSplitWarning, stacklevel=stacklevel + 1)
