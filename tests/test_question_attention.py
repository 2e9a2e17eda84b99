"""Evidence of a ``full`` read: the question's attention over the document, recorded exactly."""

from __future__ import annotations

import pytest
import torch
from test_reread import DOC, QUESTION

from qllm_core.config import QLLMConfig
from qllm_core.inputs.prompt import build_prompt
from qllm_core.memory.retrieval import block_relevance
from qllm_core.models.forward import NativeForward


def _reference(model, layout, block_size: int, ranking: str) -> torch.Tensor:
    """From the model's own eager attention probabilities, renormalised over the document."""
    ids = torch.tensor([layout.input_ids])
    (q0, q1), (d0, d1) = layout.final_question_span, layout.document_span
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = model(input_ids=ids, output_attentions=True).attentions
    finally:
        model.set_attn_implementation("sdpa")
    kv_heads = model.config.num_key_value_heads
    rows = []
    for layer in attentions:  # (1, heads, T, T)
        probs = layer[0, :, q0:q1, d0:d1].double()
        probs = probs / probs.sum(-1, keepdim=True)
        pad = -probs.shape[-1] % block_size
        shares = torch.nn.functional.pad(probs, (0, pad)).unflatten(-1, (-1, block_size)).sum(-1)
        log_mass = shares.log().unflatten(0, (kv_heads, -1))  # softmax(log) = shares
        rows.append(block_relevance(log_mass, ranking))
    return torch.stack(rows).mean(0)


@pytest.mark.parametrize("ranking", ["mean", "peak"])
def test_recorded_relevance_is_the_models_own_attention(tiny_engine, ranking):
    model, config = tiny_engine.model, tiny_engine.config
    layout = build_prompt(tiny_engine.tokenizer, DOC, QUESTION)
    recorder = tiny_engine.attached.question_attention(
        layout.final_question_span, layout.document_span, config.block_size
    )
    assert recorder is not None
    step = NativeForward(model, recorder=recorder)
    for start in range(0, len(layout.input_ids), 100):  # chunks that cut the question
        step(layout.input_ids[start : start + 100])
    expected = _reference(model, layout, config.block_size, ranking)
    scores = recorder.relevance(config.replace(reread_ranking=ranking))
    torch.testing.assert_close(scores.double(), expected, rtol=1e-4, atol=1e-6)


def test_full_answers_are_unchanged_and_get_evidence(tiny_engine):
    layout = build_prompt(tiny_engine.tokenizer, DOC, QUESTION)
    answer = tiny_engine.answer(DOC, QUESTION, mode="full", max_new_tokens=8)
    plain = tiny_engine.generate(layout.input_ids, mode="full", max_new_tokens=8)
    assert plain.stats.retrieved_blocks == ()  # ids alone: no document to rank
    assert answer.text == plain.text
    blocks = answer.stats.retrieved_blocks
    assert 0 < len(blocks) <= tiny_engine.config.topk
    assert [b.score for b in blocks] == sorted((b.score for b in blocks), reverse=True)
    doc_start, doc_end = layout.document_span
    assert all(doc_start <= b.token_start < b.token_end <= doc_end for b in blocks)
    assert all(b.char_start is not None and b.char_end > b.char_start for b in blocks)
    assert tiny_engine.model.config._attn_implementation == "sdpa"  # restored


def test_a_layer_that_keeps_a_sliding_window_is_not_recorded():
    from qllm_core.models.question_attention import QuestionAttention

    recorder = QuestionAttention((10, 12), (2, 8), block_size=4, native="sdpa")
    recorder.start = 8
    query, key = torch.randn(1, 2, 4, 8), torch.randn(1, 1, 12, 8)
    recorder.record(0, query, key[:, :, -6:], scaling=0.3)  # a window of 6 keys, not 12
    config = QLLMConfig(reread_ranking="peak")
    assert recorder.relevance(config).numel() == 0
    recorder.record(0, query, key, scaling=0.3)
    assert recorder.relevance(config).shape == (2,)  # document [2, 8): blocks of 4 -> 2
