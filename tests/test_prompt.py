"""The prompt layout: exact spans of question and document, char offsets of evidence."""

from __future__ import annotations

from qllm_core.prompt import build_document_prompt, build_prompt

DOC = "Zürich café. The vault code is 7431.\nSecond line — with ünïcode and more words."
QUESTION = "What is the vault code?"


def test_spans_hold_exactly_the_question_and_document(tokenizer):
    layout = build_prompt(tokenizer, DOC, QUESTION)
    ids = layout.input_ids
    for span in (layout.question_span, layout.final_question_span):
        assert tokenizer.decode(ids[span[0] : span[1]]) == QUESTION
    assert layout.question_span[1] <= layout.document_span[0]
    assert layout.document_span[1] <= layout.final_question_span[0]
    assert tokenizer.decode(ids[slice(*layout.document_span)]) == DOC
    text = tokenizer.decode(ids)
    assert text.count(QUESTION) == 2 and "<|im_start|>assistant" in text  # chat template


def test_char_span_maps_tokens_back_to_the_document(tokenizer):
    layout = build_prompt(tokenizer, DOC, QUESTION)
    start = layout.document_span[0]
    for lo, hi in [(0, 3), (2, 9), (5, len(layout.document_offsets))]:
        chars = layout.char_span(start + lo, start + hi)
        assert chars is not None
        assert DOC[chars[0] : chars[1]] == tokenizer.decode(
            layout.input_ids[start + lo : start + hi]
        )
    assert layout.char_span(0, 2) is None  # template tokens are not document text


def test_a_document_prompt_lays_out_the_per_question_prompt_exactly(tokenizer):
    """A memory's re-read prompt is token for token the per-question prompt."""
    expected = build_prompt(tokenizer, DOC, QUESTION)
    assert build_document_prompt(tokenizer, DOC).question_first(tokenizer, QUESTION) == expected
