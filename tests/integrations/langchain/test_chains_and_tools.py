"""The whole-document chain helper and the agent tool, on a fake engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeEngine
from langchain_core.document_loaders import BaseLoader
from langchain_core.documents import Document
from langchain_core.messages import ToolMessage

from qllm_integrations.langchain import (
    ChatQLLM,
    create_document_qa_chain,
    create_document_reader_tool,
)
from qllm_integrations.langchain.evidence import collect_evidence, format_evidence, join_texts

FILLER = "The harbour office kept a ledger of every ship. " * 20
FACT = "The pass key is 71432."


class ListLoader(BaseLoader):
    def __init__(self, docs: list[Document]) -> None:
        self.docs = docs

    def lazy_load(self) -> Iterator[Document]:
        yield from self.docs


@pytest.fixture
def chat(fake_engine: FakeEngine) -> ChatQLLM:
    return ChatQLLM(engine=fake_engine)


def test_chain_over_a_string(chat: ChatQLLM, fake_engine: FakeEngine) -> None:
    out = create_document_qa_chain(chat).invoke(
        {"document": FILLER + FACT, "question": "What is the pass key?"}
    )
    assert out["answer"] == fake_engine.reply
    assert fake_engine.calls[-1].document == FILLER + FACT
    assert [e["source"] for e in out["evidence"]] == [None]
    assert "pass key" in out["evidence"][0]["text"]


@pytest.mark.parametrize("as_loader", [False, True])
def test_chain_over_documents_cites_the_right_one(chat: ChatQLLM, as_loader: bool) -> None:
    docs = [
        Document(FILLER, metadata={"source": "a.txt"}),
        Document(FILLER + FACT, metadata={"source": "b.txt", "page": 4}),
    ]
    chain = create_document_qa_chain(chat)
    out = chain.invoke(
        {"document": ListLoader(docs) if as_loader else docs, "question": "What is the pass key?"}
    )
    [evidence] = out["evidence"]
    assert evidence["source"] == 1
    assert evidence["metadata"] == {"source": "b.txt", "page": 4}
    assert out["message"].response_metadata["split_route"] == "explicit"


async def test_chain_async(chat: ChatQLLM) -> None:
    out = await create_document_qa_chain(chat).ainvoke(
        {"document": Document(FILLER + FACT), "question": "pass key?"}
    )
    assert out["evidence"][0]["source"] == 0


def test_chain_input_errors(chat: ChatQLLM) -> None:
    chain = create_document_qa_chain(chat)
    with pytest.raises(KeyError, match="question"):
        chain.invoke({"document": "x"})
    with pytest.raises(TypeError, match="Document"):
        chain.invoke({"document": [1, 2], "question": "q"})


def test_tool_reads_text_and_cites_characters(chat: ChatQLLM) -> None:
    tool = create_document_reader_tool(chat)
    call = {
        "name": "read_document",
        "args": {"question": "What is the pass key?", "document": FILLER + FACT},
        "id": "call-1",
        "type": "tool_call",
    }
    message = tool.invoke(call)
    assert isinstance(message, ToolMessage)
    assert message.content.startswith("The answer is forty two")
    assert "characters" in message.content and FACT in message.content
    start = message.artifact["evidence"][0]["char_start"]
    assert (FILLER + FACT)[start:].find(FACT) >= 0


def test_tool_reads_a_path(chat: ChatQLLM, fake_engine: FakeEngine, tmp_path: Path) -> None:
    path = tmp_path / "doc.txt"
    path.write_text(FILLER + FACT, encoding="utf-8")
    text = create_document_reader_tool(chat).invoke(
        {"question": "What is the pass key?", "path": str(path)}
    )
    assert "71432" in text
    assert fake_engine.calls[-1].document == FILLER + FACT


def test_tool_errors_go_back_to_the_agent(chat: ChatQLLM, tmp_path: Path) -> None:
    tool = create_document_reader_tool(chat)
    assert "not found" in tool.invoke({"question": "q", "path": str(tmp_path / "missing")})
    binary = tmp_path / "b.bin"
    binary.write_bytes(b"\x00\x01" * 100)
    assert "binary" in tool.invoke({"question": "q", "path": str(binary)})
    assert "empty" in tool.invoke({"question": "q", "document": "   "})
    with pytest.raises(ValueError, match="exactly one"):
        tool.invoke({"question": "q", "document": "x", "path": "y"})


async def test_tool_async(chat: ChatQLLM) -> None:
    text = await create_document_reader_tool(chat).ainvoke(
        {"question": "pass key?", "document": FILLER + FACT}
    )
    assert "Evidence" in text


def test_evidence_helpers() -> None:
    text, spans = join_texts(["abc", "", "defg"], "--")
    assert text == "abc----defg"
    assert spans == [(0, 3), (5, 5), (7, 11)]
    blocks = [
        {"char_start": 8, "char_end": 10, "count": 5},
        {"char_start": None, "char_end": None, "count": 9},
        {"char_start": 0, "char_end": 2, "count": 2},
        {"char_start": 1, "char_end": 3, "count": 1},
    ]
    evidence = collect_evidence(blocks, text, spans=spans, metadata=[{}, {}, {"page": 2}])
    assert [(e.char_start, e.char_end, e.count, e.source) for e in evidence] == [
        (0, 3, 3, 0),
        (8, 10, 5, 2),
    ]
    assert "page 2" in format_evidence(evidence)
    assert "no part" in format_evidence([])
