"""Continuous batching: answers decoded in a batch are the answers decoded alone (greedy)."""

from __future__ import annotations

import threading

import pytest
from tiny_models import ARCHITECTURES, TINY_ENGINE_CONFIG, make_tiny_model

from qllm_core import QLLMEngine
from qllm_core.answering import scheduler as scheduler_module

DOC = " ".join(f"Item {i} of the list is the colour number {i * 7 % 13}." for i in range(90))
QUESTIONS = [
    "What is the colour number of item 42?",
    "Which item has colour number 3?",
    "Name the colour number of item 7.",
    "What does the list say about item 80?",
]
# each request a different route: the re-read, a block-memory single pass (its rows are
# the request memories), full attention, and the re-read again
ROUTES = [{}, {"mode": "streaming"}, {"mode": "full"}, {}]
REREAD = {"reread_tokens": 160, "reread_margin": 32}


def _engine(model, tokenizer, max_batch_size: int) -> QLLMEngine:
    config = TINY_ENGINE_CONFIG.replace(max_batch_size=max_batch_size, **REREAD)
    return QLLMEngine(model, tokenizer, config=config, progress=False)


def _ask(engine: QLLMEngine, i: int, **options):
    return engine.answer(DOC, QUESTIONS[i], max_new_tokens=12, **ROUTES[i], **options)


def _together(engine: QLLMEngine, **options) -> list:
    answers: list = [None] * len(QUESTIONS)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            answers[i] = _ask(engine, i, **options)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a batched request never finished"
    assert not errors, errors
    return answers


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_batched_answers_equal_answers_decoded_alone(arch, tokenizer):
    model = make_tiny_model(arch, vocab_size=len(tokenizer))
    alone = _engine(model, tokenizer, max_batch_size=1)
    expected = [_ask(alone, i) for i in range(len(QUESTIONS))]
    batched = _engine(model, tokenizer, max_batch_size=8)
    got = _together(batched)
    assert [a.text for a in got] == [a.text for a in expected]
    assert [a.finish_reason for a in got] == [a.finish_reason for a in expected]
    assert [a.stats.tokens_generated for a in got] == [a.stats.tokens_generated for a in expected]
    assert batched.scheduler.steps > 0


def test_requests_share_steps_and_wait_for_a_place(tokenizer):
    model = make_tiny_model("llama", vocab_size=len(tokenizer))
    alone = _engine(model, tokenizer, max_batch_size=1)
    memory = alone.read(DOC)
    expected = [alone.answer(memory, q, max_new_tokens=24).text for q in QUESTIONS]
    batched = _engine(model, tokenizer, max_batch_size=2)
    answers = batched.answer_many([(memory, q) for q in QUESTIONS], max_new_tokens=24)
    assert [a.text for a in answers] == expected
    assert batched.scheduler.largest_batch == 2  # never more than max_batch_size


def test_a_closed_stream_leaves_the_batch_and_the_others_finish(tokenizer):
    model = make_tiny_model("llama", vocab_size=len(tokenizer))
    alone = _engine(model, tokenizer, max_batch_size=1)
    expected = [_ask(alone, i, min_new_tokens=12).text for i in (0, 1)]
    engine = _engine(model, tokenizer, max_batch_size=8)
    results: dict[int, str] = {}

    def run(i: int) -> None:
        options = {"max_new_tokens": 12, "min_new_tokens": 12, **ROUTES[i]}
        with engine.stream(DOC, QUESTIONS[i], **options) as s:
            if i == 2:
                next(iter(s))  # one piece, then the stream is closed
                return
            results[i] = s.collect().text

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in (0, 1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert [results[0], results[1]] == expected
    assert not engine.scheduler._active and not engine.scheduler._waiting


def test_a_failing_step_fails_its_requests_and_the_next_one_runs(tokenizer, monkeypatch):
    model = make_tiny_model("llama", vocab_size=len(tokenizer))
    engine = _engine(model, tokenizer, max_batch_size=8)
    alone = _engine(model, tokenizer, max_batch_size=1)
    expected = alone.answer(DOC, QUESTIONS[0], max_new_tokens=8).text
    real = scheduler_module.batch_step
    calls = {"n": 0}

    def fails_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("the device fell over")
        return real(*args, **kwargs)

    monkeypatch.setattr(scheduler_module, "batch_step", fails_once)
    with pytest.raises(RuntimeError, match="fell over"):
        engine.answer(DOC, QUESTIONS[0], max_new_tokens=8)
    assert engine.answer(DOC, QUESTIONS[0], max_new_tokens=8).text == expected


def test_max_batch_size_is_validated():
    with pytest.raises(Exception, match="max_batch_size"):
        TINY_ENGINE_CONFIG.replace(max_batch_size=0)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_broken_worker_hands_its_error_to_the_requests_and_the_next_one_runs(tokenizer):
    model = make_tiny_model("llama", vocab_size=len(tokenizer))
    engine = _engine(model, tokenizer, max_batch_size=8)
    expected = _engine(model, tokenizer, max_batch_size=1).answer(
        DOC, QUESTIONS[0], max_new_tokens=6
    )
    real = engine.scheduler._next_batch
    calls = {"n": 0}

    def breaks_once():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("the worker broke")
        return real()

    engine.scheduler._next_batch = breaks_once
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            engine.answer(DOC, QUESTIONS[0], max_new_tokens=6)
        except RuntimeError as error:
            errors.append(error)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the request waits forever on a broken worker"
    assert [str(e) for e in errors] == ["the worker broke"]
    assert engine.answer(DOC, QUESTIONS[0], max_new_tokens=6).text == expected.text
