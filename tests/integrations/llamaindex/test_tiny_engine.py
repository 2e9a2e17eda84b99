"""Plumbing against the real engine on a tiny random model (answers are gibberish)."""

from __future__ import annotations

import asyncio

from llama_index.core import Document
from llama_index.core.llms import ChatMessage, MessageRole

from qllm_integrations.llamaindex import QLLM, WholeDocumentQueryEngine

PARAGRAPH = "Ships enter the harbour at dawn and leave before the evening tide turns. "
DOCS = [
    Document(text=PARAGRAPH * 12, id_="one", metadata={"title": "One"}),
    Document(
        text=PARAGRAPH * 9 + "The harbour code is 7731. " + PARAGRAPH * 6,
        id_="two",
        metadata={"title": "Two"},
    ),
]


def test_llm_calls_with_the_real_engine(tiny_engine):
    llm = QLLM(engine=tiny_engine, max_new_tokens=4)
    assert llm.metadata.context_window == tiny_engine.max_input_tokens
    prompt = PARAGRAPH * 10 + "\nQuery: When do ships leave?\nAnswer: "
    response = llm.complete(prompt)
    usage = response.raw["usage"]
    assert usage["input_tokens"] > 150 and 1 <= usage["output_tokens"] <= 4
    chunks = list(llm.stream_complete(prompt))
    assert "".join(c.delta for c in chunks) == chunks[-1].text == response.text
    messages = [
        ChatMessage(role=MessageRole.SYSTEM, content=PARAGRAPH * 10),
        ChatMessage(role=MessageRole.USER, content="When do ships leave?"),
    ]
    chatted = asyncio.run(llm.achat(messages))
    assert chatted.raw["qllm"]["question_found"]


def test_query_engine_evidence_maps_to_sources(tiny_engine):
    llm = QLLM(engine=tiny_engine, max_new_tokens=2)
    engine = WholeDocumentQueryEngine.from_documents(DOCS, llm=llm, max_sources=10)
    response = engine.query("What is the harbour code?")
    assert response.metadata["qllm"]["retrieved_blocks"]
    assert response.source_nodes
    texts = {d.id_: d.text for d in DOCS}
    for source in response.source_nodes:
        meta = source.node.metadata
        assert (
            texts[meta["doc_id"]][meta["char_start"] : meta["char_end"]]
            == source.node.get_content()
        )
        assert 0 < source.score <= 1
    assert sum(s.score for s in response.source_nodes) <= 1 + 1e-9
