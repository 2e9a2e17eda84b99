"""Joining documents and mapping retrieved blocks back to them as evidence nodes."""

from __future__ import annotations

from llama_index.core import Document
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import NodeRelationship, TextNode

from qllm_core.results import RetrievedBlock
from qllm_integrations.evidence import collect_evidence
from qllm_integrations.llamaindex import evidence_node, join_documents


def evidence_nodes(joined, blocks, max_sources=4):
    return [evidence_node(e) for e in collect_evidence(joined, blocks, limit=max_sources)]


TEXT_A = " ".join(f"Alpha sentence number {i} talks about apples." for i in range(300))
TEXT_B = " ".join(f"Beta sentence number {i} talks about bridges." for i in range(217))


def _docs():
    return [
        Document(text=TEXT_A, id_="a", metadata={"file_name": "a.txt", "author": "Ann"}),
        Document(text=TEXT_B, id_="b", metadata={"title": "Bridges"}),
    ]


def test_join_puts_headers_and_keeps_offsets():
    joined = join_documents(_docs())
    assert joined.text.startswith("### a.txt\nauthor: Ann\n\n" + TEXT_A[:20])
    assert "### Bridges\n\n" + TEXT_B[:10] in joined.text
    assert [s.doc_id for s in joined.sources] == ["a", "b"]
    for piece in joined.pieces:
        source_text = TEXT_A if piece.source == 0 else TEXT_B
        assert joined.text[piece.start : piece.end] == source_text


def test_join_without_headers_is_plain_text():
    joined = join_documents(_docs(), headers=False)
    assert joined.text == TEXT_A + "\n\n" + TEXT_B


def test_overlapping_chunks_are_stitched_by_position():
    nodes = SentenceSplitter(chunk_size=128, chunk_overlap=40).get_nodes_from_documents(_docs())
    assert len(nodes) > 10 and all(n.start_char_idx is not None for n in nodes)
    joined = join_documents(list(reversed(nodes)) + nodes[:3], headers=False)
    assert {s.doc_id for s in joined.sources} == {"a", "b"}
    assert TEXT_A in joined.text and TEXT_B in joined.text
    assert len(joined.text) == len(TEXT_A) + len(TEXT_B) + 2


def test_chunks_without_positions_are_stitched_by_overlap():
    chunks = [TEXT_A[:1000], TEXT_A[900:2000], TEXT_A[1950:3000]]
    nodes = [
        TextNode(
            text=c,
            relationships={
                NodeRelationship.SOURCE: Document(text="", id_="a").as_related_node_info()
            },
        )
        for c in chunks
    ]
    joined = join_documents(nodes, headers=False)
    assert joined.text == TEXT_A[:3000]


def test_evidence_maps_blocks_back_to_their_document():
    joined = join_documents(_docs())
    at = joined.text.index("Beta sentence number 117")
    blocks = (
        RetrievedBlock(token_start=900, token_end=916, count=6, char_start=at, char_end=at + 50),
        RetrievedBlock(
            token_start=916, token_end=932, count=2, char_start=at + 50, char_end=at + 90
        ),
        RetrievedBlock(token_start=10, token_end=26, count=1, char_start=30, char_end=80),
        RetrievedBlock(token_start=0, token_end=4, count=1),
    )
    nodes = evidence_nodes(joined, blocks)
    assert len(nodes) == 2
    best = nodes[0]
    assert best.score == 0.6  # its best block's share of retrievals, not the merged sum
    assert "Beta sentence number 117" in best.node.get_content()
    meta = best.node.metadata
    assert meta["doc_id"] == "b" and meta["title"] == "Bridges"
    assert TEXT_B[meta["char_start"] : meta["char_end"]] == best.node.get_content()
    assert best.node.ref_doc_id == "b"
    assert nodes[1].node.metadata["file_name"] == "a.txt"
    assert (
        TEXT_A[nodes[1].node.start_char_idx : nodes[1].node.end_char_idx]
        == nodes[1].node.get_content()
    )
    assert "char_start" not in best.node.get_content(metadata_mode="llm")


def test_evidence_in_a_header_gives_no_node_and_limits_apply():
    joined = join_documents(_docs())
    header = RetrievedBlock(token_start=0, token_end=4, count=5, char_start=0, char_end=8)
    assert evidence_nodes(joined, (header,)) == []
    many = tuple(
        RetrievedBlock(
            token_start=i, token_end=i + 1, count=1, char_start=100 * i, char_end=100 * i + 20
        )
        for i in range(1, 20)
    )
    assert len(evidence_nodes(joined, many, max_sources=3)) == 3
