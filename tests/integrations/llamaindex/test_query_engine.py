"""The whole-document query engine on the fake engine: sync, async, streaming, readers."""

from __future__ import annotations

import asyncio

from llama_index.core import Document, SimpleDirectoryReader
from llama_index.core.base.response.schema import (
    AsyncStreamingResponse,
    Response,
    StreamingResponse,
)

from qllm_integrations.llamaindex import QLLM, WholeDocumentQueryEngine

FILLER = "The river flows past the old mill and the fields are quiet. " * 40
FACT = "The lighthouse keeper's password is TANGERINE."


def _docs():
    return [
        Document(text=FILLER, id_="intro", metadata={"title": "Intro"}),
        Document(text=FILLER + FACT + " " + FILLER, id_="log", metadata={"title": "Log"}),
    ]


def _check_evidence(response, fake_engine):
    assert fake_engine.calls[-1].question == "What is the lighthouse password?"
    assert fake_engine.calls[-1].document.startswith("### Intro\n\n")
    best = response.source_nodes[0]
    assert best.score == 0.6
    assert best.node.metadata["doc_id"] == "log"
    assert "lighthouse" in best.node.get_content()
    start = best.node.metadata["char_start"]
    assert (FILLER + FACT + " " + FILLER)[
        start : best.node.metadata["char_end"]
    ] == best.node.get_content()
    assert response.metadata["usage"]["input_tokens"] > 0


def test_query_returns_answer_and_evidence(llm, fake_engine):
    engine = WholeDocumentQueryEngine.from_documents(_docs(), llm=llm)
    response = engine.query("What is the lighthouse password?")
    assert isinstance(response, Response)
    assert response.response == fake_engine.reply
    _check_evidence(response, fake_engine)


def test_generation_settings_come_from_the_llm(fake_engine):
    llm = QLLM(
        engine=fake_engine,
        max_new_tokens=3,
        temperature=0.3,
        repetition_penalty=1.15,
        no_repeat_ngram_size=4,
    )
    engine = WholeDocumentQueryEngine.from_documents(_docs(), llm=llm)
    assert engine.query("What is the lighthouse password?").response == "The answer is"
    options = fake_engine.calls[-1].options
    assert options["temperature"] == 0.3
    assert options["repetition_penalty"] == 1.15 and options["no_repeat_ngram_size"] == 4


def test_default_llm_is_settings_llm_when_it_is_a_qllm(llm, clean_settings):
    clean_settings.llm = llm
    assert WholeDocumentQueryEngine.from_documents(_docs()).llm is llm


def test_streaming_fills_sources_at_the_end(llm, fake_engine):
    engine = WholeDocumentQueryEngine.from_documents(_docs(), llm=llm, streaming=True)
    response = engine.query("What is the lighthouse password?")
    assert isinstance(response, StreamingResponse)
    assert response.source_nodes == []
    assert "".join(response.response_gen) == fake_engine.reply
    _check_evidence(response, fake_engine)


def test_async_query_and_async_streaming(llm, fake_engine):
    plain = WholeDocumentQueryEngine.from_documents(_docs(), llm=llm)
    streaming = WholeDocumentQueryEngine.from_documents(_docs(), llm=llm, streaming=True)

    async def main():
        response = await plain.aquery("What is the lighthouse password?")
        streamed = await streaming.aquery("What is the lighthouse password?")
        assert isinstance(streamed, AsyncStreamingResponse)
        text = "".join([piece async for piece in streamed.async_response_gen()])
        return response, streamed, text

    response, streamed, text = asyncio.run(main())
    assert response.response == text == fake_engine.reply
    _check_evidence(response, fake_engine)
    _check_evidence(streamed, fake_engine)


def test_from_reader(tmp_path, llm, fake_engine):
    (tmp_path / "a.txt").write_text(FILLER)
    (tmp_path / "b.txt").write_text(FILLER + FACT)
    reader = SimpleDirectoryReader(str(tmp_path))
    engine = WholeDocumentQueryEngine.from_reader(reader, llm=llm)
    assert [s.title for s in engine.joined.sources] == ["a.txt", "b.txt"]
    assert "file_path: " in engine.document
    response = engine.query("What is the lighthouse password?")
    assert response.source_nodes[0].node.metadata["file_name"] == "b.txt"
