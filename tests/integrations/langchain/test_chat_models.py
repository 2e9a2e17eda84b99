"""ChatQLLM on a fake engine: routes, options, metadata, streaming, async, engine lifecycle."""

from __future__ import annotations

import asyncio
import threading
import warnings
from typing import Any

import pytest
from fakes import FakeEngine, keep_gate_open
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from pydantic import BaseModel

from qllm_core.config import QLLMConfig
from qllm_core.errors import EmptyInputError, InvalidOptionError
from qllm_core.spec import EngineSpec
from qllm_integrations import settings as params_module
from qllm_integrations.langchain import ChatQLLM
from qllm_integrations.split import QuestionNotFoundWarning

DOC = (
    "\n\n".join(
        f"Paragraph {i}. The harbour office kept a ledger of every ship that year."
        for i in range(40)
    )
    + "\n\nThe pass key is 71432."
)


class TokenRecorder(BaseCallbackHandler):
    """Collects the tokens passed to ``on_llm_new_token``."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


@pytest.fixture
def chat(fake_engine: FakeEngine) -> ChatQLLM:
    return ChatQLLM(engine=fake_engine)


# --- routes -----------------------------------------------------------------------------


def test_short_chat_goes_direct_in_the_chat_template(
    chat: ChatQLLM, fake_engine: FakeEngine
) -> None:
    reply = chat.invoke([SystemMessage("Be brief."), HumanMessage("Hello")])
    assert reply.content == fake_engine.direct_reply
    assert reply.response_metadata["split_route"] == "direct"
    call = fake_engine.calls[-1]
    assert call.method == "stream_ids"
    assert fake_engine.tokenizer.decode(call.input_ids or []) == (
        "<|system|>\nBe brief.\n<|user|>\nHello\n<|assistant|>\n"
    )


def test_system_document_and_user_question(chat: ChatQLLM, fake_engine: FakeEngine) -> None:
    reply = chat.invoke([SystemMessage(DOC), HumanMessage("What is the pass key?")])
    assert reply.response_metadata["split_route"] == "chat"
    call = fake_engine.calls[-1]
    assert (call.method, call.document, call.question) == ("stream", DOC, "What is the pass key?")


def test_bound_document_makes_the_input_the_question(
    chat: ChatQLLM, fake_engine: FakeEngine
) -> None:
    reply = chat.bind(document=DOC).invoke("What is the pass key?")
    assert reply.response_metadata["split_route"] == "explicit"
    assert (fake_engine.calls[-1].document, fake_engine.calls[-1].question) == (
        DOC,
        "What is the pass key?",
    )


def test_explicit_question_in_invoke(chat: ChatQLLM, fake_engine: FakeEngine) -> None:
    chat.invoke(DOC, question="What is the pass key?")
    assert fake_engine.calls[-1].document == DOC


def test_text_plain_block_is_the_document(chat: ChatQLLM, fake_engine: FakeEngine) -> None:
    message = HumanMessage(
        content_blocks=[
            {"type": "text-plain", "text": DOC, "mime_type": "text/plain"},
            {"type": "text", "text": "What is the pass key?"},
        ]
    )
    reply = chat.invoke([message])
    assert reply.response_metadata["split_route"] == "chat"
    assert fake_engine.calls[-1].document == DOC
    assert fake_engine.calls[-1].question == "What is the pass key?"


def test_question_pattern_inside_one_user_message(chat: ChatQLLM, fake_engine: FakeEngine) -> None:
    reply = chat.invoke(f"{DOC}\n\nQuestion: What is the pass key?\nAnswer:")
    assert reply.response_metadata["split_route"] == "pattern"
    assert fake_engine.calls[-1].question == "What is the pass key?"


def test_tail_route_warns(chat: ChatQLLM) -> None:
    with pytest.warns(QuestionNotFoundWarning):
        reply = chat.invoke(f"{DOC}\n\nWhat is the pass key?")
    assert reply.response_metadata["split_route"] == "tail"


def test_short_prompts_do_not_warn(chat: ChatQLLM) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chat.invoke("Some context. What is it?")


def test_images_are_refused(chat: ChatQLLM) -> None:
    message = HumanMessage(content=[{"type": "image", "url": "https://example.com/a.png"}])
    with pytest.raises(ValueError, match="text only"):
        chat.invoke([message])


def test_empty_question_is_an_empty_input_error(chat: ChatQLLM) -> None:
    with pytest.raises(EmptyInputError):
        chat.invoke([SystemMessage(DOC), HumanMessage("   ")])


# --- options ----------------------------------------------------------------------------


def test_options_reach_the_engine(fake_engine: FakeEngine) -> None:
    chat = ChatQLLM(
        engine=fake_engine,
        max_tokens=7,
        min_new_tokens=2,
        temperature=0.5,
        top_p=0.9,
        repetition_penalty=1.3,
        no_repeat_ngram_size=4,
        seed=3,
        mode="infllm",
        stop=["END"],
    )
    chat.invoke("Hello")
    assert fake_engine.calls[-1].options == {
        "max_new_tokens": 7,
        "min_new_tokens": 2,
        "temperature": 0.5,
        "top_p": 0.9,
        "repetition_penalty": 1.3,
        "no_repeat_ngram_size": 4,
        "seed": 3,
        "stop": ["END"],
        "mode": "infllm",
    }
    chat.invoke(
        "Hello",
        stop=["x"],
        max_tokens=2,
        min_new_tokens=0,
        temperature=0.0,
        repetition_penalty=1.0,
        seed=None,
        mode="full",
    )
    assert fake_engine.calls[-1].options == {
        "max_new_tokens": 2,
        "min_new_tokens": 0,
        "temperature": 0.0,
        "top_p": 0.9,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 4,
        "stop": ["x"],  # seed=None: left to the engine's default (no seed)
        "mode": "full",
    }


def test_stop_and_max_tokens_cut_the_answer(chat: ChatQLLM) -> None:
    stopped = chat.invoke(DOC, question="pass key?", stop=["forty"])
    assert stopped.content == "The answer is "
    assert stopped.response_metadata["finish_reason"] == "stop"
    short = chat.invoke(DOC, question="pass key?", max_tokens=3)
    assert short.content == "The answer is"
    assert short.response_metadata["finish_reason"] == "length"


def test_unknown_keyword_is_refused(chat: ChatQLLM) -> None:
    with pytest.raises(InvalidOptionError, match="did you mean 'max_new_tokens'"):
        chat.invoke("Hello", max_new_token=3)


# --- metadata ---------------------------------------------------------------------------


def test_usage_and_response_metadata(chat: ChatQLLM, fake_engine: FakeEngine) -> None:
    reply = chat.invoke([SystemMessage(DOC), HumanMessage("What is the pass key?")])
    assert isinstance(reply, AIMessage)
    usage = reply.usage_metadata
    assert usage is not None and usage["input_tokens"] > 100
    assert usage["output_tokens"] == 9
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    meta = reply.response_metadata
    assert meta["model_name"] == "fake-model"
    assert meta["model_provider"] == "quickllama"
    assert meta["finish_reason"] == "eos"
    stats = meta["qllm"]
    # input_tokens: the whole prompt (read with the question: no memory by default)
    assert stats["tokens_read"] + stats["memory_tokens"] == usage["input_tokens"]
    assert stats["memory_tokens"] == 0 and meta["memory_reused"] is None
    assert "input_token_details" not in usage  # nothing came from a cache
    assert stats["seconds"] == pytest.approx(stats["prefill_seconds"] + stats["decode_seconds"])
    block = stats["retrieved_blocks"][0]
    assert "pass key" in DOC[block["char_start"] : block["char_end"]]


def test_profile_reports_the_engine_limit_without_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(params_module, "get_engine", _refuse)
    lazy = ChatQLLM(config=QLLMConfig(max_input_tokens=5000))
    assert lazy.profile is not None
    assert lazy.profile["max_input_tokens"] == 5000
    assert lazy.profile["tool_calling"] is False
    assert ChatQLLM(config="llama3").profile["max_input_tokens"] == (  # type: ignore[index]
        QLLMConfig.preset("llama3").max_input_tokens
    )
    engine = FakeEngine(config=QLLMConfig(max_input_tokens=123_456))
    assert ChatQLLM(engine=engine).profile["max_input_tokens"] == 123_456  # type: ignore[index]


def test_identifying_and_tracing_params(chat: ChatQLLM) -> None:
    params = chat._identifying_params
    assert params["model"] == "fake-model"
    assert params["max_new_tokens"] == 256
    ls = chat._get_ls_params(stop=["a"], model="other")
    assert ls["ls_provider"] == "quickllama"
    assert ls["ls_model_name"] == "other"
    assert ls["ls_stop"] == ["a"]
    assert ChatQLLM(config="smollm2")._identifying_params["config"] == "smollm2"


def test_token_ids_use_the_model_tokenizer(chat: ChatQLLM, fake_engine: FakeEngine) -> None:
    ids = chat.get_token_ids("one two three")
    assert ids == fake_engine.tokenizer.encode("one two three")
    assert chat.get_num_tokens("one two three") == 3


# --- streaming and async ----------------------------------------------------------------


def test_stream_pieces_callbacks_and_final_chunk(chat: ChatQLLM) -> None:
    recorder = TokenRecorder()
    chunks = list(
        chat.stream(
            [SystemMessage(DOC), HumanMessage("the pass key?")], config={"callbacks": [recorder]}
        )
    )
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert "".join(recorder.tokens) == "The answer is forty two, as the document says."
    last = chunks[-1]
    assert last.chunk_position == "last"
    assert last.usage_metadata is not None
    assert last.response_metadata["split_route"] == "chat"
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    assert full.content == "".join(recorder.tokens)


def test_abandoned_stream_releases_the_engine(chat: ChatQLLM, fake_engine: FakeEngine) -> None:
    stream = chat.stream("Hello")
    next(stream)
    stream.close()
    assert chat.invoke("Hello").content  # would deadlock if the lock were still held


def test_streaming_flag_streams_inside_invoke(fake_engine: FakeEngine) -> None:
    recorder = TokenRecorder()
    chat = ChatQLLM(engine=fake_engine, streaming=True)
    reply = chat.invoke("Hello", config={"callbacks": [recorder]})
    assert "".join(recorder.tokens) == reply.content


async def test_astream_does_not_block_the_event_loop() -> None:
    gate = threading.Event()
    engine = FakeEngine(loop_gate=gate)  # waits for the loop before each piece
    chat = ChatQLLM(engine=engine)
    task = asyncio.create_task(keep_gate_open(gate))
    pieces = [c.content async for c in chat.astream("Hello")]
    task.cancel()
    assert "".join(str(p) for p in pieces) == engine.direct_reply


async def test_ainvoke_and_concurrent_abatch() -> None:
    engine = FakeEngine(delay=0.005)
    chat = ChatQLLM(engine=engine)
    reply = await chat.ainvoke([SystemMessage(DOC), HumanMessage("the pass key?")])
    assert reply.response_metadata["split_route"] == "chat"
    replies = await chat.abatch(["Hello"] * 4)
    assert {r.content for r in replies} == {engine.direct_reply}
    assert engine.max_active == 1  # the engine's lock serialized them


async def test_astream_propagates_engine_errors(chat: ChatQLLM) -> None:
    with pytest.raises(EmptyInputError):
        async for _ in chat.astream([SystemMessage(DOC), HumanMessage(" ")]):
            pass


async def test_async_callbacks_see_tokens(chat: ChatQLLM) -> None:
    recorder = TokenRecorder()
    reply = await chat.ainvoke(
        "Hello",
        config={"callbacks": [recorder]},
    )
    chunks = [c async for c in chat.astream("Hello", config={"callbacks": [recorder]})]
    assert chunks[-1].chunk_position == "last"
    assert "".join(recorder.tokens) == reply.content


# --- engine lifecycle -------------------------------------------------------------------


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the engine was loaded")


def test_engine_is_loaded_lazily_from_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[EngineSpec] = []
    engine = FakeEngine()

    def fake_get_engine(spec: EngineSpec) -> FakeEngine:
        loads.append(spec)
        return engine

    monkeypatch.setattr(params_module, "get_engine", fake_get_engine)
    chat = ChatQLLM(model="/models/x", config="smollm2", device="cpu", dtype="float32")
    assert not loads
    chat.invoke("Hello")
    chat.invoke("Hello")
    assert loads == [EngineSpec("/models/x", preset="smollm2", device="cpu", dtype="float32")]
    with pytest.raises(InvalidOptionError, match="unknown option 'model'"):
        chat.invoke("Hello", model="/models/y")


def test_tools_and_structured_output_say_what_to_use_instead(chat: ChatQLLM) -> None:
    class Person(BaseModel):
        name: str

    for call in (lambda: chat.bind_tools([Person]), lambda: chat.with_structured_output(Person)):
        with pytest.raises(NotImplementedError, match="create_document_reader_tool"):
            call()
    assert chat.profile is not None and chat.profile["structured_output"] is False
