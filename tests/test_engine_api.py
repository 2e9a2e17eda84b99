"""The public engine API on a tiny random model: answers, streaming, stats, errors."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch
import transformers

from qllm_core import (
    ConfigError,
    EmptyInputError,
    InputTooLongError,
    InvalidDocumentError,
    QLLMEngine,
    UnsupportedModelError,
)

DOC = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(120))
QUESTION = "Which topic does sentence 42 talk about?"


def test_answer_returns_text_and_stats(tiny_engine):
    answer = tiny_engine.answer(DOC, QUESTION, max_new_tokens=5)
    stats = answer.stats
    prompt_parts = tiny_engine.count_tokens(DOC) + 2 * tiny_engine.count_tokens(QUESTION)
    assert stats.tokens_read > prompt_parts
    assert stats.question_found and stats.mode == "qllm"
    assert answer.finish_reason in {"length", "eos"}
    assert stats.tokens_generated <= 5 and stats.prefill_seconds > 0
    assert stats.retrieved_blocks, "decoding must retrieve memory blocks"
    for block in stats.retrieved_blocks:
        assert block.token_end - block.token_start == tiny_engine.config.block_size
        if block.char_start is not None:
            assert 0 <= block.char_start < block.char_end <= len(DOC)
    scores = [b.score for b in stats.retrieved_blocks]
    assert scores == sorted(scores, reverse=True)  # most relevant to the question first


def test_stream_pieces_add_up_to_the_answer(tiny_engine):
    stream = tiny_engine.stream(DOC, QUESTION, max_new_tokens=8)
    pieces = list(stream)
    assert stream.result is not None
    assert "".join(pieces) == stream.result.text
    again = tiny_engine.answer(DOC, QUESTION, max_new_tokens=8)
    assert again.text == stream.result.text  # greedy: deterministic, fresh state each time


def test_sampling_is_reproducible_with_a_seed(tiny_engine):
    runs = [
        tiny_engine.answer(DOC, QUESTION, max_new_tokens=6, temperature=1.0, seed=s).text
        for s in (1, 1, 2)
    ]
    assert runs[0] == runs[1]


def test_min_new_tokens_holds_off_the_end_of_sequence(tiny_engine, monkeypatch):
    first = tiny_engine.answer(DOC, QUESTION, max_new_tokens=1).text
    token = tiny_engine.tokenizer.encode(first, add_special_tokens=False)[0]
    # the greedy first token made the end of sequence: the answer ends at once ...
    pipeline = dataclasses.replace(tiny_engine.pipeline, eos_token_ids=frozenset({token}))
    monkeypatch.setattr(tiny_engine, "pipeline", pipeline)
    assert tiny_engine.answer(DOC, QUESTION, max_new_tokens=8).finish_reason == "eos"
    # ... unless min_new_tokens holds it off; after those, it may end the answer again
    held = tiny_engine.answer(DOC, QUESTION, max_new_tokens=8, min_new_tokens=3)
    assert held.stats.tokens_generated >= 3
    ids = tiny_engine.tokenizer.encode(held.text, add_special_tokens=False)
    assert token not in ids[:3]


def test_stop_strings_end_the_answer(tiny_engine):
    full = tiny_engine.answer(DOC, QUESTION, max_new_tokens=12)
    assert len(full.text) >= 4, "the seeded random model should produce some text"
    stop = full.text[2:4]
    cut = tiny_engine.answer(DOC, QUESTION, max_new_tokens=12, stop=[stop])
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]


@pytest.mark.parametrize("mode", ["qllm", "infllm", "streaming", "full"])
def test_every_mode_answers_the_same_prompt(tiny_engine, mode):
    answer = tiny_engine.answer(DOC, QUESTION, max_new_tokens=3, mode=mode)
    assert answer.stats.mode == mode
    assert answer.stats.tokens_generated >= 1 or answer.finish_reason == "eos"
    if mode == "streaming":  # no memory blocks to retrieve
        assert answer.stats.retrieved_blocks == ()
    else:  # full: the blocks the question attended to (tests/test_question_attention.py)
        assert answer.stats.retrieved_blocks


def test_generate_from_token_ids(tiny_engine):
    ids = tiny_engine.tokenizer(DOC)["input_ids"]
    with_question = tiny_engine.generate(ids, question_span=(3, 9), max_new_tokens=3)
    without = tiny_engine.generate(torch.tensor(ids), max_new_tokens=3)
    assert with_question.stats.question_found and not without.stats.question_found
    with pytest.raises(ValueError, match="question_span"):
        tiny_engine.generate(ids, question_span=(5, 10**6))


def test_concurrent_requests_match_sequential_ones(tiny_engine):
    questions = [QUESTION, "What is sentence 7 about?", "Name a topic."]
    alone = [tiny_engine.answer(DOC, q, max_new_tokens=4).text for q in questions]
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        results[i] = tiny_engine.answer(DOC, questions[i], max_new_tokens=4).text

    threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)  # a deadlock fails here instead of hanging the suite
    assert not any(t.is_alive() for t in threads), "a request never finished (deadlock?)"
    assert [results[i] for i in range(3)] == alone


@pytest.mark.parametrize(
    "document, question, error",
    [
        ("", QUESTION, EmptyInputError),
        ("   \n\t", QUESTION, EmptyInputError),
        (DOC, "", EmptyInputError),
        (b"bytes are not text", QUESTION, InvalidDocumentError),
    ],
)
def test_bad_input_raises_named_errors(tiny_engine, document, question, error):
    with pytest.raises(error):
        tiny_engine.answer(document, question)


def test_input_over_the_limit_is_refused_not_truncated(tiny_engine):
    engine = QLLMEngine(
        tiny_engine.model,
        tiny_engine.tokenizer,
        config=tiny_engine.config.replace(max_input_tokens=100),
    )
    with pytest.raises(InputTooLongError, match="max_input_tokens=100"):
        engine.answer(DOC, QUESTION)
    assert engine.max_input_tokens == 100


def test_impossible_override_raises_config_error(tiny_engine):
    with pytest.raises(ConfigError, match="mode"):
        tiny_engine.answer(DOC, QUESTION, mode="turbo")


def test_models_without_rotary_embedding_are_refused(tokenizer):
    gpt2 = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)
    )
    with pytest.raises(UnsupportedModelError, match="rotary"):
        QLLMEngine(gpt2, tokenizer)
    bert = transformers.BertModel(
        transformers.BertConfig(
            num_hidden_layers=1,
            hidden_size=32,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=64,
        )
    )
    with pytest.raises(UnsupportedModelError):
        QLLMEngine(bert, tokenizer)


def test_options_left_out_take_the_engines_generation_defaults(tiny_engine, monkeypatch):
    from qllm_core.options import GenerationOptions

    def answer(**options):
        return tiny_engine.answer(DOC, QUESTION, max_new_tokens=12, min_new_tokens=12, **options)

    plain = answer().text
    sampled = answer(temperature=1.0, seed=3).text
    assert sampled != plain
    defaults = GenerationOptions(temperature=1.0, seed=3)
    monkeypatch.setattr(tiny_engine, "generation_defaults", defaults)
    assert answer().text == sampled
    assert answer(temperature=None).text == sampled  # None keeps the default
    assert answer(temperature=0).text == plain  # given, an option replaces it


def test_the_embedded_model_decodes_with_its_ngram_guard():
    from qllm_core.options import GenerationOptions

    assert GenerationOptions.default_for(None).no_repeat_ngram_size == 6
    assert GenerationOptions.default_for("/models/llama") == GenerationOptions()


@pytest.mark.parametrize("reread", [False, True], ids=["read", "re-read"])
def test_cancel_from_another_thread_stops_the_read_between_chunks(tiny_engine, reread):
    from qllm_core.progress import report_progress

    config = tiny_engine.config.replace(prefill_chunk_size=32)
    if reread:
        config = config.replace(reread_tokens=256)
    engine = QLLMEngine(tiny_engine.model, tiny_engine.tokenizer, config=config, progress=False)
    stream = engine.stream(DOC * 3, QUESTION, max_new_tokens=4)
    events, started = [], threading.Event()
    phase = "reread" if reread else "read"

    def listen(event):
        events.append(event)
        if event.phase == phase and event.done:
            started.set()

    def consume():
        with report_progress(listen):
            list(stream)

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert started.wait(60)
    stream.cancel()  # returns at once, from this thread, while the other one reads
    consumer.join(60)
    assert not consumer.is_alive()
    assert stream.result is not None and stream.result.finish_reason == "cancelled"
    assert stream.result.text == "" and stream.result.stats.tokens_generated == 0
    cut = [e for e in events if e.phase == phase]
    assert cut[-1].done < cut[-1].total  # stopped before the end of that read
    engine.answer(DOC, QUESTION, max_new_tokens=2)  # and the engine answers the next one
