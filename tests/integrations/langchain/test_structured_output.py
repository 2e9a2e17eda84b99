"""ChatQLLM.with_structured_output: JSON asked for in the prompt, parsed and validated."""

from __future__ import annotations

import json
from typing import Annotated, Any

import pytest
from fakes import FakeEngine
from langchain_core.exceptions import OutputParserException
from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from qllm_integrations.langchain import ChatQLLM, StructuredOutputError
from qllm_integrations.langchain.structured import extract_json_object, schema_errors

DOC = "The harbour office kept a ledger. " * 60


class Joke(BaseModel):
    """Joke to tell user."""

    setup: str = Field(description="question to set up a joke")
    punchline: str = Field(description="answer to resolve the joke")


class JokeDict(TypedDict):
    """Joke to tell user."""

    setup: Annotated[str, ..., "question to set up a joke"]
    punchline: Annotated[str, ..., "answer to resolve the joke"]


JOKE_JSON = '{"setup": "Why did the cat sit on the ledger?", "punchline": "To keep tabs."}'


def _chat(reply: str) -> tuple[ChatQLLM, FakeEngine]:
    engine = FakeEngine(reply=reply, direct_reply=reply)
    return ChatQLLM(engine=engine), engine


@pytest.mark.parametrize("schema", [Joke, JokeDict, Joke.model_json_schema()])
def test_valid_json_is_parsed(schema: Any) -> None:
    chat, engine = _chat(f"Sure! ```json\n{JOKE_JSON}\n```")
    result = chat.with_structured_output(schema).invoke("Tell me a joke about cats.")
    if schema is Joke:
        assert result == Joke(setup="Why did the cat sit on the ledger?", punchline="To keep tabs.")
    else:
        assert result == json.loads(JOKE_JSON)
    asked = engine.tokenizer.decode(engine.calls[-1].input_ids or [])
    assert '"punchline"' in asked and "JSON schema" in asked


def test_the_schema_goes_into_the_question_on_long_inputs() -> None:
    chat, engine = _chat(JOKE_JSON)
    chat.with_structured_output(Joke).invoke(DOC, question="Make a joke about it.")
    question = engine.calls[-1].question or ""
    assert question.startswith("Make a joke about it.")
    assert '"setup"' in question


def test_stream_yields_the_parsed_object() -> None:
    chat, _ = _chat(JOKE_JSON)
    chunks = list(chat.with_structured_output(Joke).stream("joke"))
    assert chunks[-1] == Joke.model_validate_json(JOKE_JSON)


async def test_async() -> None:
    chat, _ = _chat(JOKE_JSON)
    assert await chat.with_structured_output(JokeDict).ainvoke("joke") == json.loads(JOKE_JSON)


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        ("I cannot do JSON, sorry.", "no JSON object"),
        ('{"setup": "only a setup"}', "punchline"),
        ('{"setup": 3, "punchline": "x"}', "setup"),
    ],
)
@pytest.mark.parametrize("schema", [Joke, Joke.model_json_schema()])
def test_non_compliant_replies_raise_a_named_error(reply: str, match: str, schema: Any) -> None:
    chat, _ = _chat(reply)
    with pytest.raises(StructuredOutputError, match=match) as caught:
        chat.with_structured_output(schema).invoke("joke")
    assert isinstance(caught.value, OutputParserException)
    assert caught.value.llm_output == reply


def test_include_raw_reports_the_parsing_error() -> None:
    chat, _ = _chat("no json here")
    out = chat.with_structured_output(Joke, include_raw=True).invoke("joke")
    assert out["parsed"] is None
    assert isinstance(out["parsing_error"], StructuredOutputError)
    assert out["raw"].content == "no json here"
    good, _ = _chat(JOKE_JSON)
    out = good.with_structured_output(Joke, include_raw=True).invoke("joke")
    assert isinstance(out["parsed"], Joke) and out["parsing_error"] is None


def test_json_mode_without_schema() -> None:
    chat, engine = _chat('{"anything": [1, 2]}')
    assert chat.with_structured_output(None, method="json_mode").invoke("x") == {"anything": [1, 2]}
    assert "JSON schema" not in engine.tokenizer.decode(engine.calls[-1].input_ids or [])


def test_bad_arguments() -> None:
    chat, _ = _chat(JOKE_JSON)
    with pytest.raises(ValueError, match="method"):
        chat.with_structured_output(Joke, method="xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="schema is required"):
        chat.with_structured_output(None)
    with pytest.raises(ValueError, match="unsupported"):
        chat.with_structured_output(Joke, tools=[])


def test_extract_and_validate_helpers() -> None:
    assert extract_json_object('x {"a": 1} y {"b": 2}') == {"a": 1}
    assert extract_json_object("[1, 2] {bad") is None
    schema = {
        "type": "object",
        "required": ["n"],
        "properties": {
            "n": {"type": "integer"},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}},
            "ref": {"$ref": "#/$defs/R"},
        },
        "$defs": {"R": {"type": "string"}},
    }
    assert schema_errors({"n": 1, "tags": ["a"], "ref": "x"}, schema) == []
    problems = schema_errors({"n": True, "tags": ["c"], "ref": 2}, schema)
    assert len(problems) == 3
