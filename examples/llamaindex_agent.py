"""A LlamaIndex ReActAgent that reads a whole document through a Q-LLM tool.

    python examples/llamaindex_agent.py

The agent's own reasoning needs an instruction-following LLM; this script stands in a
two-line scripted one so that it runs offline. Replace ``ScriptedAgentLLM()`` with your
agent LLM (any LlamaIndex LLM); QLLM only does the reading, inside the tool.
"""

from __future__ import annotations

import asyncio
import json

from llama_index.core import Document
from llama_index.core.agent.workflow import ReActAgent, ToolCallResult
from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata
from llama_index.core.llms.callbacks import llm_completion_callback

from qllm_integrations.llamaindex import QLLM, document_tool

QUESTION = "Who repaired the old bridge, according to the town log?"
LOG = "\n\n".join(
    ["The weather in the valley was mild that spring. Farmers came to the market."] * 60
    + ["In May the old bridge was repaired by the carpenter Ilse Marrow and her two sons."]
    + ["Children played near the river after school. The library opened late."] * 60
)


class ScriptedAgentLLM(CustomLLM):
    """Stand-in agent brain: first calls the tool, then repeats what the tool said."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="scripted-agent")

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs) -> CompletionResponse:
        observations = prompt.split("Observation:")[2:]  # the first is the format example
        if not observations:
            action = json.dumps({"input": QUESTION})
            return CompletionResponse(
                text="Thought: I should read the log.\n"
                f"Action: read_town_log\nAction Input: {action}"
            )
        said = observations[-1].strip().splitlines()[0]
        return CompletionResponse(
            text=f"Thought: I can answer without using any more tools.\nAnswer: {said}"
        )

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs):
        response = self.complete(prompt, formatted=formatted)
        yield CompletionResponse(text=response.text, delta=response.text)


async def main() -> None:
    reader = QLLM(max_new_tokens=40)
    tool = document_tool(
        [Document(text=LOG, metadata={"title": "Town log 1923"})], llm=reader, name="read_town_log"
    )
    agent = ReActAgent(tools=[tool], llm=ScriptedAgentLLM())
    handler = agent.run(user_msg=QUESTION)
    async for event in handler.stream_events():
        if isinstance(event, ToolCallResult):
            print(f"tool {event.tool_name}({event.tool_kwargs}) -> {event.tool_output.content}")
            for source in event.tool_output.raw_output.source_nodes[:3]:
                print(f"  evidence [{source.score:.0%}]: {source.node.get_content()[:100]!r}")
    print(f"agent: {await handler}")


if __name__ == "__main__":
    asyncio.run(main())
