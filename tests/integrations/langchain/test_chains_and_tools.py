"""The whole-document chain helper and the agent tool, on a fake engine."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import FakeEngine
from langchain_core.document_loaders import BaseLoader
from langchain_core.documents import Document
from langchain_core.messages import ToolMessage

from qllm_core.results import RetrievedBlock
from qllm_integrations.evidence import Source, collect_evidence, format_evidence, join_texts
from qllm_integrations.langchain import (
    ChatQLLM,
    create_document_qa_chain,
    create_document_reader_tool,
)

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
    assert [e["source"] for e in out["evidence"]] == [0]
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


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"question": "q", "path": "/no/such/file"}, "not found"),
        ({"question": "q", "document": "   "}, "empty"),
        ({"question": "q", "document": "x", "path": "y"}, "exactly one.*got both"),
        ({"question": "q"}, "exactly one.*got neither"),
        ({"document": "some text"}, "bad arguments.*question"),
        ({"question": 3, "document": "x"}, "bad arguments"),
    ],
)
def test_tool_errors_go_back_to_the_agent(
    chat: ChatQLLM, arguments: dict[str, object], message: str
) -> None:
    tool = create_document_reader_tool(chat)
    reply = tool.invoke(arguments)
    assert isinstance(reply, str) and reply.startswith("error:")
    assert re.search(message, reply), reply


def test_tool_error_for_binary_files(chat: ChatQLLM, tmp_path: Path) -> None:
    binary = tmp_path / "b.bin"
    binary.write_bytes(b"\x00\x01" * 100)
    assert "binary" in create_document_reader_tool(chat).invoke(
        {"question": "q", "path": str(binary)}
    )


async def test_tool_async(chat: ChatQLLM) -> None:
    text = await create_document_reader_tool(chat).ainvoke(
        {"question": "pass key?", "document": FILLER + FACT}
    )
    assert "Evidence" in text


def test_evidence_helpers() -> None:
    joined = join_texts(
        [
            (Source(str(i), f"doc {i}", meta), [(text, 0)])
            for i, (text, meta) in enumerate([("abc", {}), ("", {}), ("defg", {"page": 2})])
        ],
        separator="--",
    )
    assert joined.text == "abc----defg"
    blocks = [
        RetrievedBlock(0, 1, count=5, char_start=7, char_end=9, score=0.5),
        RetrievedBlock(1, 2, count=9, score=0.3),
        RetrievedBlock(2, 3, count=2, char_start=0, char_end=2, score=0.1),
        RetrievedBlock(3, 4, count=1, char_start=1, char_end=3, score=0.05),
    ]
    evidence = collect_evidence(joined, blocks)
    assert [(e.char_start, e.char_end, e.source) for e in evidence] == [(0, 4, 2), (0, 3, 0)]
    assert evidence[0].score == 0.5 and evidence[1].score == 0.1  # merged: the best block's
    spanning = [RetrievedBlock(0, 1, count=1, char_start=1, char_end=9, score=0.5)]
    assert [e.source for e in collect_evidence(joined, spanning, limit=3)] == [0, 2]
    assert len(collect_evidence(joined, spanning, limit=1)) == 1  # split per source, capped
    text = format_evidence(evidence)
    assert "page 2" in text and "score 0.50" in text
    assert "no part" in format_evidence([])
