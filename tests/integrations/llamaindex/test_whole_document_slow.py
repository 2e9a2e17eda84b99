"""SimpleDirectoryReader -> WholeDocumentQueryEngine with the embedded model (slow).

A pass key is hidden in the middle of a text several times longer than the engine's local
window; the answer must contain it, and so must one of the evidence source nodes.
"""

from __future__ import annotations

import logging

import pytest
from llama_index.core import SimpleDirectoryReader

from qllm_integrations.llamaindex import QLLM, WholeDocumentQueryEngine

logger = logging.getLogger(__name__)

pytestmark = pytest.mark.slow

FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
KEY = "71432"
INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
)


def test_reader_to_whole_document_answer_with_evidence(tmp_path):
    (tmp_path / "a_preface.txt").write_text(INTRO + FILLER * 20)
    log = FILLER * 60 + f"The pass key is {KEY}. Remember it. {KEY} is the pass key. " + FILLER * 60
    (tmp_path / "b_log.txt").write_text(log)

    # Mode qllm (block memory), though it would fit; the per-question (query-aware) read,
    # the default. Read once (read_once=True), the embedded model reads the text
    # question-free and answered "The pass key is a special key that is used to create"
    # instead of the key (measured, issue 14).
    llm = QLLM(max_new_tokens=12, mode="qllm", read_once=False)
    engine = WholeDocumentQueryEngine.from_reader(SimpleDirectoryReader(str(tmp_path)), llm=llm)
    response = engine.query("What is the pass key?")
    stats = response.metadata["qllm"]
    logger.warning(
        "answer %r; %d tokens read in %.1f s",
        response.response,
        stats["tokens_read"],
        stats["prefill_seconds"],
    )

    assert response.metadata["memory_reused"] is None  # no memory: read with the question
    assert stats["tokens_read"] > 3 * llm.engine.config.n_local
    assert KEY in response.response
    evidence = [s for s in response.source_nodes if KEY in s.node.get_content()]
    assert evidence, [s.node.get_content()[:80] for s in response.source_nodes]
    node = evidence[0].node
    assert node.metadata["file_name"] == "b_log.txt"
    assert log[node.metadata["char_start"] : node.metadata["char_end"]] == node.get_content()
