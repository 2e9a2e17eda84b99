"""LangChain provider: ``ChatQLLM``, ``QLLM``, a whole-document chain and an agent tool.

Importing this package imports langchain-core but not torch: engines load on first use.
"""

from qllm_integrations.langchain.chains import create_document_qa_chain
from qllm_integrations.langchain.chat_models import ChatQLLM
from qllm_integrations.langchain.errors import StructuredOutputError
from qllm_integrations.langchain.evidence import Evidence
from qllm_integrations.langchain.llms import QLLM
from qllm_integrations.langchain.structured import JsonSchemaOutputParser
from qllm_integrations.langchain.tools import create_document_reader_tool

__all__ = [
    "QLLM",
    "ChatQLLM",
    "Evidence",
    "JsonSchemaOutputParser",
    "StructuredOutputError",
    "create_document_qa_chain",
    "create_document_reader_tool",
]
