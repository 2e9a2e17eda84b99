"""A real LCEL chain (prompt | ChatQLLM | StrOutputParser) over a long document.

Runs the embedded SmolLM2-135M-Instruct with its preset: minutes on a CPU.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from qllm_integrations.langchain import ChatQLLM

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

FACT = "The pass key to the harbour archive is 71432."


class MetadataRecorder(BaseCallbackHandler):
    """Keeps the chat model's response metadata, which StrOutputParser drops."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, Any]] = []

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.metadata.append(response.generations[0][0].message.response_metadata)


def test_lcel_chain_over_a_long_document() -> None:
    from qllm_core.inputs.documents import synthetic_document

    document = synthetic_document(10_000, seed=3, fact=FACT, at=0.4)
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "Read this document.\n\n{document}"),
            ("human", "{question}"),
        ]
    )
    chat = ChatQLLM(max_new_tokens=24, mode="qllm")  # the memory path, though it would fit
    chain = prompt | chat | StrOutputParser()
    recorder = MetadataRecorder()
    answer = chain.invoke(
        {"document": document, "question": "What is the pass key to the harbour archive?"},
        config={"callbacks": [recorder]},
    )
    logger.info("answer: %r", answer)
    assert isinstance(answer, str) and answer.strip()
    [meta] = recorder.metadata
    assert meta["split_route"] == "chat"
    stats = meta["qllm"]
    assert stats["question_found"] is True
    # the per-question read (read_once is off by default): no memory used
    assert meta["memory_reused"] is None and stats["memory_tokens"] == 0
    assert stats["tokens_read"] + stats["memory_tokens"] > chat.get_engine().config.n_local
    assert stats["retrieved_blocks"]
    fact_at = document.index(FACT)
    recalled = any(
        b["char_start"] is not None and b["char_start"] <= fact_at < b["char_end"]
        for b in stats["retrieved_blocks"]
    )
    assert recalled, "the passage holding the fact is not in the evidence"
    assert "71432" in answer
    assert chat.profile is not None
    assert chat.profile["max_input_tokens"] == chat.get_engine().max_input_tokens
