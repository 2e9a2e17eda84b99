"""Framework integrations of quickllama, and the pieces they share.

LangChain lives in ``qllm_integrations.langchain``, LlamaIndex in
``qllm_integrations.llamaindex``.

Nothing heavy is imported here: attributes are resolved on first access, so importing
``qllm_integrations`` pulls in neither torch nor any framework.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qllm_integrations._lazy import lazy_attributes

if TYPE_CHECKING:
    from qllm_integrations.engines import get_engine
    from qllm_integrations.langchain import QLLM, ChatQLLM
    from qllm_integrations.split import (
        PromptSplit,
        QuestionNotFoundWarning,
        split_chat,
        split_text,
    )

_LAZY = {
    "get_engine": "qllm_integrations.engines",
    "PromptSplit": "qllm_integrations.split",
    "QuestionNotFoundWarning": "qllm_integrations.split",
    "split_chat": "qllm_integrations.split",
    "split_text": "qllm_integrations.split",
    "ChatQLLM": "qllm_integrations.langchain",
    "QLLM": "qllm_integrations.langchain",
}

__all__ = [  # noqa: F822 (resolved by __getattr__)
    "QLLM",
    "ChatQLLM",
    "PromptSplit",
    "QuestionNotFoundWarning",
    "get_engine",
    "split_chat",
    "split_text",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
