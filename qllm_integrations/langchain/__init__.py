"""LangChain provider: ``ChatQLLM``, ``QLLM``, a whole-document chain and an agent tool.

Importing this package imports langchain-core but not torch: engines load on first use.
"""

from qllm_integrations.evidence import Evidence
from qllm_integrations.langchain.chat_models import ChatQLLM, get_evidence
from qllm_integrations.langchain.documents import (
    create_document_qa_chain,
    create_document_reader_tool,
)
from qllm_integrations.langchain.llms import QLLM
from qllm_integrations.langchain.progress import PROGRESS_EVENT

__all__ = [
    "PROGRESS_EVENT",
    "QLLM",
    "ChatQLLM",
    "Evidence",
    "create_document_qa_chain",
    "create_document_reader_tool",
    "get_evidence",
]
