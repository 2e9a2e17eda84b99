"""LlamaIndex provider: the ``QLLM`` LLM, a whole-document query engine, agent tools.

Needs the ``llama-index`` extra (``pip install 'quickllama[llama-index]'``). The model is
loaded on first use, never on import. The recipe is in ``docs/llamaindex.md``.
"""

from .documents import join_documents
from .guards import (
    ContextSplitError,
    ContextSplitWarning,
    check_query_engine,
    check_settings,
)
from .llm import QLLM
from .progress import ReadProgressEvent
from .query_engine import WholeDocumentQueryEngine, evidence_node
from .tools import document_function_tool, document_tool

__all__ = [
    "QLLM",
    "ContextSplitError",
    "ContextSplitWarning",
    "ReadProgressEvent",
    "WholeDocumentQueryEngine",
    "check_query_engine",
    "check_settings",
    "document_function_tool",
    "document_tool",
    "evidence_node",
    "join_documents",
]
