"""The whole-document query engine reads its documents once, keeps the memory, and persists it.

Reuse is asserted through the response metadata (``memory_reused``) and the engine's reads
(the fake's ``reads``, the real engine's memory cache), never through timing. One
persist/load round trip runs on real tiny engines: saved by one, loaded by a fresh one.
"""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
from fakes import FakeEngine
from llama_index.core import Document
from tiny_models import TINY_ENGINE_CONFIG, make_tiny_model

from qllm_core.errors import MemoryFileError, MemoryMismatchError
from qllm_integrations.llamaindex import QLLM, WholeDocumentQueryEngine, document_tool
from qllm_integrations.llamaindex.query_engine import MANIFEST, MEMORY_DIR

FILLER = "The river flows past the old mill and the fields are quiet. " * 20
FACT = "The lighthouse keeper's password is TANGERINE."
QUESTION = "What is the lighthouse password?"
DOCS = [
    Document(text=FILLER, id_="intro", metadata={"title": "Intro"}),
    Document(text=FILLER + FACT + " " + FILLER, id_="log", metadata={"title": "Log", "page": 3}),
]


def test_queries_read_the_documents_once(fake_engine: FakeEngine) -> None:
    engine = WholeDocumentQueryEngine.from_documents(
        DOCS, llm=QLLM(engine=fake_engine, read_once=True)
    )
    assert engine.memory is None  # nothing is read before the first query
    responses = [engine.query(QUESTION), engine.query("Who keeps the lighthouse?")]
    assert [r.metadata["memory_reused"] for r in responses] == [False, True]
    assert fake_engine.reads == [engine.document]
    assert (
        engine.memory is not None and engine.memory is fake_engine.memories[(engine.document, None)]
    )
    assert responses[1].source_nodes[0].node.metadata["doc_id"] == "log"  # evidence still maps
    assert responses[1].metadata["document_sha256"] == engine.memory.document_sha256


def test_the_kept_memory_outlives_the_engine_cache(fake_engine: FakeEngine) -> None:
    engine = WholeDocumentQueryEngine.from_documents(
        DOCS, llm=QLLM(engine=fake_engine, read_once=True)
    )
    engine.query(QUESTION)
    fake_engine.memories.clear()  # the engine's cache evicted it
    assert engine.query(QUESTION).metadata["memory_reused"] is True
    assert len(fake_engine.reads) == 1


def test_streaming_async_and_tool_copies_share_the_memory(fake_engine: FakeEngine) -> None:
    engine = WholeDocumentQueryEngine.from_documents(
        DOCS, llm=QLLM(engine=fake_engine, read_once=True), streaming=True
    )
    streamed = engine.query(QUESTION)
    assert "".join(streamed.response_gen) == fake_engine.reply  # type: ignore[union-attr]
    assert streamed.metadata is not None and streamed.metadata["memory_reused"] is False

    async def main() -> list[bool]:
        response = await engine.aquery(QUESTION)
        text = "".join([p async for p in response.async_response_gen()])  # type: ignore[union-attr]
        assert text == fake_engine.reply
        return [response.metadata["memory_reused"]]

    assert asyncio.run(main()) == [True]
    tool = document_tool(engine)  # a non-streaming copy of the query engine
    output = tool.call(QUESTION)
    assert output.raw_output.metadata["memory_reused"] is True
    assert len(fake_engine.reads) == 1


def test_concurrent_first_queries_read_once(make_engine: type[FakeEngine]) -> None:
    fake = make_engine(read_delay=0.05)  # the reads of concurrent queries would overlap
    engine = WholeDocumentQueryEngine.from_documents(DOCS, llm=QLLM(engine=fake, read_once=True))

    async def main() -> list[bool]:
        responses = await asyncio.gather(*(engine.aquery(QUESTION) for _ in range(4)))
        return sorted(r.metadata["memory_reused"] for r in responses)

    assert asyncio.run(main()) == [False, True, True, True]
    assert len(fake.reads) == 1


def test_a_new_mode_reads_again(fake_engine: FakeEngine) -> None:
    llm = QLLM(engine=fake_engine, read_once=True)
    engine = WholeDocumentQueryEngine.from_documents(DOCS, llm=llm)
    engine.query(QUESTION)
    llm.mode = "infllm"
    changed = engine.query(QUESTION)
    assert changed.metadata["memory_reused"] is False
    assert changed.metadata["qllm"]["mode"] == "infllm"
    assert list(fake_engine.memories) == [(engine.document, None), (engine.document, "infllm")]


def test_read_once_false_reads_per_query(fake_engine: FakeEngine) -> None:
    engine = WholeDocumentQueryEngine.from_documents(
        DOCS, llm=QLLM(engine=fake_engine, read_once=False)
    )
    responses = [engine.query(QUESTION) for _ in range(2)]
    assert [r.metadata["memory_reused"] for r in responses] == [None, None]
    assert fake_engine.reads == [] and engine.memory is None
    assert [call.from_memory for call in fake_engine.calls] == [False, False]


def test_persist_writes_the_text_and_the_memory(fake_engine: FakeEngine, tmp_path) -> None:
    engine = WholeDocumentQueryEngine.from_documents(
        DOCS, llm=QLLM(engine=fake_engine, read_once=True)
    )
    engine.persist(tmp_path / "storage")  # reads the documents: no query was made yet
    assert fake_engine.reads == [engine.document]
    manifest = json.loads((tmp_path / "storage" / MANIFEST).read_text())
    assert manifest["joined"]["text"] == engine.document
    assert manifest["document_sha256"] == engine.memory.document_sha256  # type: ignore[union-attr]
    assert (tmp_path / "storage" / MEMORY_DIR / "fake-memory.json").is_file()
    assert engine.query(QUESTION).metadata["memory_reused"] is True  # the memory it saved
    with pytest.raises(TypeError, match="QLLMEngine"):  # a fake cannot load a memory
        WholeDocumentQueryEngine.from_persist_dir(
            tmp_path / "storage", llm=QLLM(engine=fake_engine, read_once=True)
        )


def test_loading_a_missing_or_foreign_directory_fails(fake_engine: FakeEngine, tmp_path) -> None:
    llm = QLLM(engine=fake_engine, read_once=True)
    with pytest.raises(MemoryFileError, match="persisted query engine"):
        WholeDocumentQueryEngine.from_persist_dir(tmp_path, llm=llm)
    (tmp_path / MANIFEST).write_text('{"format": "something else"}')
    with pytest.raises(MemoryFileError, match="not a quickllama"):
        WholeDocumentQueryEngine.from_persist_dir(tmp_path, llm=llm)


# --- a real round trip on tiny engines --------------------------------------------------


def _fresh_tiny_engine(tiny_engine):
    """Another engine on the same tiny model (same seed, same weights): a restarted process."""
    from qllm_core.engine import QLLMEngine

    model = make_tiny_model("llama", vocab_size=len(tiny_engine.tokenizer))
    return QLLMEngine(model, tiny_engine.tokenizer, config=TINY_ENGINE_CONFIG, progress=False)


def test_persist_and_load_round_trip_on_real_engines(tiny_engine, tmp_path) -> None:
    saver = _fresh_tiny_engine(tiny_engine)
    llm = QLLM(engine=saver, max_new_tokens=4, read_once=True)
    engine = WholeDocumentQueryEngine.from_documents(DOCS, llm=llm, max_sources=10)
    first = engine.query(QUESTION)
    assert first.metadata["memory_reused"] is False
    engine.persist(tmp_path / "storage")

    loader = _fresh_tiny_engine(tiny_engine)
    loaded = WholeDocumentQueryEngine.from_persist_dir(
        tmp_path / "storage",
        llm=QLLM(engine=loader, max_new_tokens=4, read_once=True),
        max_sources=10,
    )
    assert loaded.document == engine.document
    assert [s.doc_id for s in loaded.joined.sources] == ["intro", "log"]
    assert loaded.memory is not None and loaded.memory.tokens == engine.memory.tokens  # type: ignore[union-attr]
    again = loaded.query(QUESTION)
    assert again.metadata["memory_reused"] is True
    assert len(loader.memories) == 0  # answered from the loaded memory: nothing was read
    assert again.metadata["document_sha256"] == first.metadata["document_sha256"]
    assert again.response == first.response  # same state, same greedy answer
    assert again.metadata["qllm"]["retrieved_blocks"] == first.metadata["qllm"]["retrieved_blocks"]
    texts = {d.id_: d.text for d in DOCS}
    for source in again.source_nodes:  # evidence maps to the documents, metadata kept
        meta = source.node.metadata
        assert texts[meta["doc_id"]][meta["char_start"] : meta["char_end"]] == source.node.text
        assert meta.get("page") == (3 if meta["doc_id"] == "log" else None)


def test_a_mixed_up_persist_directory_is_refused(tiny_engine, tmp_path) -> None:
    llm = QLLM(engine=tiny_engine, max_new_tokens=2, read_once=True)
    WholeDocumentQueryEngine.from_documents(DOCS[:1], llm=llm).persist(tmp_path / "one")
    WholeDocumentQueryEngine.from_documents(DOCS[1:], llm=llm).persist(tmp_path / "two")
    shutil.rmtree(tmp_path / "one" / MEMORY_DIR)
    shutil.copytree(tmp_path / "two" / MEMORY_DIR, tmp_path / "one" / MEMORY_DIR)
    with pytest.raises(MemoryMismatchError, match="another text"):
        WholeDocumentQueryEngine.from_persist_dir(tmp_path / "one", llm=llm)
    manifest_path = tmp_path / "two" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["joined"]["text"] = manifest["joined"]["text"].replace("TANGERINE", "MANDARINE")
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(MemoryFileError, match="edited"):
        WholeDocumentQueryEngine.from_persist_dir(tmp_path / "two", llm=llm)
