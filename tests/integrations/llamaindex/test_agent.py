"""A ReActAgent (scripted LLM) reads a whole document through our tools."""

from __future__ import annotations

import asyncio
import json

import pytest
from llama_index.core import Document
from llama_index.core.agent.workflow import ReActAgent, ToolCallResult
from llama_index.core.base.response.schema import Response
from llama_index.core.llms import (
    CompletionResponse,
    CompletionResponseGen,
    CustomLLM,
    LLMMetadata,
)
from llama_index.core.llms.callbacks import llm_completion_callback

from qllm_integrations.llamaindex import document_function_tool, document_tool

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

QUESTION = "What is the lighthouse keeper's password?"
DOCS = [
    Document(
        text="Notes. " * 50
        + "The lighthouse keeper's password is TANGERINE. "
        + "More notes. " * 50,
        metadata={"title": "Keeper's log"},
    )
]


class ScriptedLLM(CustomLLM):
    """Says the next line of its script on every call (the agent's brain in tests)."""

    script: list[str]
    prompts: list[str] = []

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="scripted")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs) -> CompletionResponse:
        self.prompts.append(prompt)
        return CompletionResponse(text=self.script[len(self.prompts) - 1])

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs
    ) -> CompletionResponseGen:
        text = self.complete(prompt, formatted=formatted).text
        yield CompletionResponse(text=text, delta=text)


def _script(argument: str) -> list[str]:
    return [
        "Thought: The answer is in the log; I need to use a tool to read it.\n"
        f"Action: read_log\nAction Input: {json.dumps({argument: QUESTION})}",
        "Thought: I can answer without using any more tools.\nAnswer: The password is TANGERINE.",
    ]


@pytest.mark.parametrize(
    ("factory", "argument"), [(document_tool, "input"), (document_function_tool, "question")]
)
def test_react_agent_calls_the_document_tool(llm, fake_engine, factory, argument):
    tool = factory(DOCS, llm=llm, name="read_log")
    assert "Keeper's log" in tool.metadata.description
    brain = ScriptedLLM(script=_script(argument))
    agent = ReActAgent(tools=[tool], llm=brain)

    async def run():
        handler = agent.run(user_msg=QUESTION)
        results = [
            event async for event in handler.stream_events() if isinstance(event, ToolCallResult)
        ]
        return await handler, results

    final, results = asyncio.run(run())
    assert "TANGERINE" in str(final)
    assert len(results) == 1 and results[0].tool_name == "read_log"
    assert fake_engine.calls[-1].question == QUESTION
    assert "password is TANGERINE" in fake_engine.calls[-1].document
    output = results[0].tool_output
    assert output.content == fake_engine.reply
    assert isinstance(output.raw_output, Response)
    assert "lighthouse" in output.raw_output.source_nodes[0].node.get_content()
    assert fake_engine.reply in brain.prompts[-1]


def test_streaming_engine_is_made_non_streaming_for_tools(llm):
    from qllm_integrations.llamaindex import WholeDocumentQueryEngine

    engine = WholeDocumentQueryEngine.from_documents(DOCS, llm=llm, streaming=True)
    tool = document_function_tool(engine)
    output = tool.call(question=QUESTION)
    assert isinstance(output.raw_output, Response)
    assert engine.streaming
