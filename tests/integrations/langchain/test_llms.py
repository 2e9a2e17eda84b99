"""QLLM (text completion) on a fake engine."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import FakeEngine
from langchain_core.callbacks import BaseCallbackHandler

from qllm_core.errors import InvalidOptionError
from qllm_integrations.langchain import QLLM

DOC = "The harbour office kept a ledger of every ship. " * 40 + "The pass key is 71432."


class TokenRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


@pytest.fixture
def llm(fake_engine: FakeEngine) -> QLLM:
    return QLLM(engine=fake_engine, max_tokens=50)


def test_long_prompt_is_split_and_answered(llm: QLLM, fake_engine: FakeEngine) -> None:
    text = llm.invoke(f"{DOC}\n\nQuery: What is the pass key?\nAnswer: ")
    assert text == "The answer is forty two, as the document says."
    call = fake_engine.calls[-1]
    assert (call.document, call.question) == (DOC, "What is the pass key?")


def test_short_prompt_is_one_user_turn(llm: QLLM, fake_engine: FakeEngine) -> None:
    assert llm.invoke("Once upon a time") == fake_engine.direct_reply
    assert fake_engine.tokenizer.decode(fake_engine.calls[-1].input_ids or []) == (
        "<|user|>\nOnce upon a time\n<|assistant|>\n"
    )


def test_generation_info_and_llm_output(llm: QLLM) -> None:
    result = llm.generate([DOC + "\n\nQuestion: pass key?", "Hello"])
    first, second = result.generations[0][0], result.generations[1][0]
    assert first.generation_info is not None and second.generation_info is not None
    assert first.generation_info["split_route"] == "pattern"
    assert second.generation_info["split_route"] == "direct"
    assert first.generation_info["qllm"]["retrieved_blocks"]
    usage = result.llm_output["token_usage"]  # type: ignore[index]
    assert usage["input_tokens"] == (
        first.generation_info["usage_metadata"]["input_tokens"]
        + second.generation_info["usage_metadata"]["input_tokens"]
    )


def test_stream_fires_on_llm_new_token(llm: QLLM) -> None:
    recorder = TokenRecorder()
    pieces = list(llm.stream("Hello", config={"callbacks": [recorder]}))
    assert "".join(pieces) == "".join(recorder.tokens) == "Hello! I am a small fake model."


def test_streaming_flag(fake_engine: FakeEngine) -> None:
    recorder = TokenRecorder()
    llm = QLLM(engine=fake_engine, streaming=True)
    result = llm.generate(["Hello"], callbacks=[recorder])
    assert result.generations[0][0].text == "".join(recorder.tokens)
    assert result.generations[0][0].generation_info["finish_reason"] == "eos"  # type: ignore[index]


def test_stop(llm: QLLM) -> None:
    assert llm.invoke("Hello", stop=[" am"]) == "Hello! I"


async def test_async(llm: QLLM, fake_engine: FakeEngine) -> None:
    assert await llm.ainvoke("Hello") == fake_engine.direct_reply
    recorder = TokenRecorder()
    pieces = [p async for p in llm.astream("Hello", config={"callbacks": [recorder]})]
    assert "".join(pieces) == "".join(recorder.tokens) == fake_engine.direct_reply


def test_response_format_is_refused(llm: QLLM) -> None:
    with pytest.raises(InvalidOptionError, match="response_format"):
        llm.invoke("x", response_format={"type": "json_object"})
