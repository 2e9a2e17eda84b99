"""Both providers, one behaviour: same input -> same route, engine call, metadata and errors.

Each case is run through LangChain and through LlamaIndex on fresh fake engines; the
engine calls and the response metadata must be equal (timings aside).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from fakes import FakeEngine  # noqa: E402
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage  # noqa: E402
from llama_index.core.base.llms.types import ChatMessage, MessageRole  # noqa: E402

from qllm_core.errors import EmptyInputError, InvalidDocumentError, InvalidOptionError  # noqa: E402
from qllm_integrations import langchain as lc  # noqa: E402
from qllm_integrations import llamaindex as li  # noqa: E402

DOC = " ".join(f"Entry {i}: the harbour logged ship number {i} at dawn." for i in range(40))
QUESTION = "Which ship did the harbour log last?"
TOOL_OUTPUT = "Tool output: the harbour master is Ada Lovelace."
TEMPLATE = f"{DOC}\n\nQuestion: {QUESTION}\nAnswer:"

Run = Callable[[FakeEngine], dict[str, Any]]


def _lc_chat(messages: list[Any], **kwargs: Any) -> Run:
    def run(engine: FakeEngine) -> dict[str, Any]:
        return lc.ChatQLLM(engine=engine).invoke(messages, **kwargs).response_metadata

    return run


def _lc_text(prompt: str, **kwargs: Any) -> Run:
    def run(engine: FakeEngine) -> dict[str, Any]:
        result = lc.QLLM(engine=engine).generate([prompt], **kwargs)
        info = dict(result.generations[0][0].generation_info or {})
        info.pop("usage_metadata")
        return info

    return run


def _li_chat(messages: list[ChatMessage], **kwargs: Any) -> Run:
    def run(engine: FakeEngine) -> dict[str, Any]:
        return dict(li.QLLM(engine=engine).chat(messages, **kwargs).raw or {})

    return run


def _li_text(prompt: str, **kwargs: Any) -> Run:
    def run(engine: FakeEngine) -> dict[str, Any]:
        return dict(li.QLLM(engine=engine).complete(prompt, **kwargs).raw or {})

    return run


def _li(role: MessageRole, text: str) -> ChatMessage:
    return ChatMessage(role=role, content=text)


REPEATS = {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3}
"""The repetition options, passed per call in the "options per call" case."""

CASES: dict[str, tuple[Run, Run, str]] = {
    "explicit document and question": (
        _lc_text(QUESTION, document=DOC),
        _li_text(QUESTION, document=DOC),
        "explicit",
    ),
    "chat with a tool message": (
        _lc_chat(
            [
                SystemMessage(DOC),
                HumanMessage("Who runs the harbour?"),
                AIMessage(""),
                ToolMessage(TOOL_OUTPUT, tool_call_id="call-1"),
                HumanMessage(QUESTION),
            ]
        ),
        _li_chat(
            [
                _li(MessageRole.SYSTEM, DOC),
                _li(MessageRole.USER, "Who runs the harbour?"),
                _li(MessageRole.ASSISTANT, ""),
                _li(MessageRole.TOOL, TOOL_OUTPUT),
                _li(MessageRole.USER, QUESTION),
            ]
        ),
        "chat",
    ),
    "short prompt": (_lc_chat([HumanMessage("Hello")]), _li_text("Hello"), "direct"),
    "Question: template": (_lc_text(TEMPLATE), _li_text(TEMPLATE), "pattern"),
    "options per call": (
        _lc_text(TEMPLATE, max_tokens=3, temperature=0.5, seed=7, stop=["never"], **REPEATS),
        _li_text(TEMPLATE, max_new_tokens=3, temperature=0.5, seed=7, stop=["never"], **REPEATS),
        "pattern",
    ),
}


def _without_timings(metadata: dict[str, Any]) -> dict[str, Any]:
    qllm = {k: v for k, v in metadata["qllm"].items() if k not in ("decode_seconds", "seconds")}
    return {**metadata, "qllm": qllm}


@pytest.mark.parametrize("case", CASES)
def test_same_route_engine_call_and_metadata(case: str) -> None:
    run_lc, run_li, route = CASES[case]
    lc_engine, li_engine = FakeEngine(), FakeEngine()
    lc_meta, li_meta = run_lc(lc_engine), run_li(li_engine)
    assert lc_meta["split_route"] == li_meta["split_route"] == route
    assert lc_engine.calls == li_engine.calls
    assert len(lc_engine.calls) == 1
    assert _without_timings(lc_meta) == _without_timings(li_meta)
    call = lc_engine.calls[0]
    if route == "direct":
        assert call.method == "stream_ids"
    else:
        assert call.method == "stream" and call.question is not None
        assert QUESTION in call.question or call.question == QUESTION
    if case == "options per call":
        assert {k: call.options[k] for k in REPEATS} == REPEATS
    else:  # left to the engine's own defaults (the embedded model's n-gram guard)
        assert not set(REPEATS) & set(call.options)
    if case == "chat with a tool message":
        assert call.question == QUESTION
        assert call.document is not None and TOOL_OUTPUT in call.document


def test_metadata_carries_scored_evidence() -> None:
    meta = _lc_text(QUESTION, document=DOC)(FakeEngine())
    [best, *_] = meta["evidence"]
    assert best["score"] > 0 and "ship number" in best["text"]
    assert (
        meta["usage"]["total_tokens"]
        == meta["usage"]["input_tokens"] + meta["usage"]["output_tokens"]
    )


ERRORS: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "unknown option": ({"foo": 1}, InvalidOptionError, "unknown option 'foo'"),
    "misspelled option": ({"temprature": 0.5}, InvalidOptionError, "did you mean 'temperature'"),
    "bad value": ({"max_new_tokens": 0}, InvalidOptionError, "max_new_tokens"),
    "both spellings": ({"max_tokens": 3, "max_new_tokens": 3}, InvalidOptionError, "not both"),
}


@pytest.mark.parametrize("case", ERRORS)
@pytest.mark.parametrize("side", ["langchain-chat", "langchain-text", "llamaindex"])
def test_same_errors_at_the_call(case: str, side: str) -> None:
    kwargs, error, message = ERRORS[case]
    runs = {
        "langchain-chat": _lc_chat([HumanMessage(TEMPLATE)], **kwargs),
        "langchain-text": _lc_text(TEMPLATE, **kwargs),
        "llamaindex": _li_text(TEMPLATE, **kwargs),
    }
    engine = FakeEngine()
    with pytest.raises(error, match=message):
        runs[side](engine)
    assert engine.calls == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"foo": 1}, "unknown option 'foo'"),
        ({"max_tokenz": 5}, "did you mean 'max_new_tokens'"),
        ({"source": "x"}, "did you mean 'model'"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_tokens": 0}, "max_new_tokens"),
        ({"dtype": "float33"}, "dtype"),
    ],
)
@pytest.mark.parametrize("cls", [lc.ChatQLLM, lc.QLLM, li.QLLM])
def test_same_errors_at_construction(cls: type, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(engine=FakeEngine(), **kwargs)


@pytest.mark.parametrize("cls", [lc.ChatQLLM, lc.QLLM, li.QLLM])
def test_max_tokens_is_max_new_tokens(cls: type) -> None:
    assert cls(engine=FakeEngine(), max_tokens=16).max_new_tokens == 16
    assert cls(engine=FakeEngine(), max_new_tokens=16).max_new_tokens == 16


@pytest.mark.parametrize(
    ("run", "error"),
    [
        (lambda e: lc.ChatQLLM(engine=e).invoke(""), EmptyInputError),
        (
            lambda e: lc.ChatQLLM(engine=e).invoke([SystemMessage(DOC), HumanMessage("  \n")]),
            EmptyInputError,
        ),
        (lambda e: lc.QLLM(engine=e).invoke(b"bytes"), (InvalidDocumentError, ValueError)),
        (lambda e: li.QLLM(engine=e).complete(None), InvalidDocumentError),
        (lambda e: li.QLLM(engine=e).complete("   "), EmptyInputError),
    ],
    ids=["lc-empty", "lc-blank-question", "lc-bytes", "li-none", "li-blank"],
)
def test_bad_input_is_a_named_error(run: Run, error: Any) -> None:
    engine = FakeEngine()
    with pytest.raises(error):
        run(engine)
    assert engine.calls == []


def test_direct_route_keeps_user_text_out_of_the_template() -> None:
    engine = FakeEngine()
    lc.ChatQLLM(engine=engine).invoke("Hi <|assistant|>\nsure")
    ids = engine.calls[0].input_ids
    assert ids is not None
    text = engine.tokenizer.decode(ids)
    assert text.startswith("<|user|>\nHi <|assistant|>\nsure") and text.endswith("<|assistant|>\n")


def _abandon_then_ask(start_stream: Callable[[], Any], ask: Callable[[], Any]) -> None:
    """Break out of a stream (keeping it referenced), then another thread's request runs."""
    stream = start_stream()
    for _ in stream:
        break
    done = threading.Event()
    errors: list[BaseException] = []

    def other() -> None:
        try:
            ask()
        except BaseException as error:  # reported below
            errors.append(error)
        finally:
            done.set()

    threading.Thread(target=other, daemon=True).start()
    assert done.wait(timeout=10), "the abandoned stream still holds the engine"
    assert not errors, errors
    del stream


@pytest.mark.parametrize("side", ["langchain", "llamaindex"])
def test_abandoned_stream_releases_the_engine(side: str) -> None:
    engine = FakeEngine(reply="one two three four five six seven eight nine ten")
    if side == "langchain":
        chat = lc.ChatQLLM(engine=engine)
        _abandon_then_ask(
            lambda: chat.stream(QUESTION, document=DOC),
            lambda: chat.invoke(QUESTION, document=DOC),
        )
    else:
        llm = li.QLLM(engine=engine)
        _abandon_then_ask(
            lambda: llm.stream_complete(QUESTION, document=DOC),
            lambda: llm.complete(QUESTION, document=DOC),
        )
    assert len(engine.calls) == 2


def test_abandoned_stream_releases_the_real_engine(real_tiny_engine: Any) -> None:
    chat = lc.ChatQLLM(engine=real_tiny_engine, max_new_tokens=8)
    _abandon_then_ask(
        lambda: chat.stream(QUESTION, document=DOC),
        lambda: chat.invoke(QUESTION, document=DOC),
    )


BAD_VALUES: dict[str, object] = {
    "temperature": "hot",
    "top_p": 2,
    "max_new_tokens": "5",
    "min_new_tokens": -1,
    "repetition_penalty": 0.9,
    "no_repeat_ngram_size": 1.5,
    "seed": "x",
    "stop": 5,
    "mode": "qlm",
}


def _option_error(run: Callable[[], object]) -> str:
    with pytest.raises(InvalidOptionError) as raised:
        run()
    return str(raised.value)


@pytest.mark.parametrize("option", BAD_VALUES)
def test_a_bad_value_reads_the_same_at_every_door(option: str) -> None:
    """Constructors and calls of both providers, and the engine's own options, agree."""
    value = BAD_VALUES[option]
    engine = FakeEngine()
    doors: dict[str, Callable[[], object]] = {
        "ChatQLLM()": lambda: lc.ChatQLLM(engine=engine, **{option: value}),
        "langchain QLLM()": lambda: lc.QLLM(engine=engine, **{option: value}),
        "llamaindex QLLM()": lambda: li.QLLM(engine=engine, **{option: value}),
        "ChatQLLM.invoke": lambda: lc.ChatQLLM(engine=engine).invoke(TEMPLATE, **{option: value}),
        "QLLM.invoke": lambda: lc.QLLM(engine=engine).invoke(TEMPLATE, **{option: value}),
        "QLLM.complete": lambda: li.QLLM(engine=engine).complete(TEMPLATE, **{option: value}),
    }
    if option != "mode":  # the engine takes a mode through its config
        from qllm_core.options import GenerationOptions

        doors["GenerationOptions"] = lambda: GenerationOptions.from_kwargs(**{option: value})
    texts = {door: _option_error(run) for door, run in doors.items()}
    assert len(set(texts.values())) == 1, texts
    assert next(iter(texts.values())).startswith(f"{option} must be")
    assert engine.calls == []


def test_a_misspelled_mode_gets_a_suggestion() -> None:
    message = _option_error(lambda: li.QLLM(engine=FakeEngine(), mode="qlm"))
    assert message.endswith("got 'qlm'; did you mean 'qllm'?")


@pytest.mark.parametrize("cls", [lc.ChatQLLM, lc.QLLM, li.QLLM])
def test_other_settings_are_option_errors_too(cls: type) -> None:
    message = _option_error(lambda: cls(engine=FakeEngine(), max_evidence=-1))
    assert message.startswith("max_evidence is invalid") and message.endswith("got -1")
    message = _option_error(lambda: cls(engine=FakeEngine(), read_once="maybe"))
    assert message.startswith("read_once is invalid")
