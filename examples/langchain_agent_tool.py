"""The document-reading tool an agent delegates to, called the way an agent calls it.

    python examples/langchain_agent_tool.py                  # a generated chronicle
    python examples/langchain_agent_tool.py report.txt "Who signed the contract?"

The tool takes a question plus the document's text or path, so the agent never puts the
document in its own context. Its answer ends with the evidence: the passages most relevant
to the question, each with its score and character range. Problems with the arguments come
back as an ``error: ...`` message the agent can act on. Any tool-calling agent can use it, e.g.
``langchain.agents.create_agent(model, tools=[tool])``; here it is called directly with a
tool call, as an agent would.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from qllm_core.inputs.documents import synthetic_document
from qllm_integrations.langchain import ChatQLLM, create_document_reader_tool

FACT = "The pass key to the harbour archive is 71432."


def main(argv: list[str]) -> int:
    tool = create_document_reader_tool(ChatQLLM(max_new_tokens=48))
    print(f"tool {tool.name!r}: {tool.description}\nargs: {sorted(tool.args)}\n")
    with tempfile.TemporaryDirectory() as scratch:
        if len(argv) == 2:
            path, question = argv
        else:
            path = str(Path(scratch) / "chronicle.txt")
            Path(path).write_text(synthetic_document(30_000, fact=FACT, at=0.6), encoding="utf-8")
            question = "What is the pass key to the harbour archive?"
        message = tool.invoke(
            {
                "type": "tool_call",
                "id": "call-1",
                "name": tool.name,
                "args": {"question": question, "path": path},
            }
        )
    print(message.content)  # what the agent reads: the answer, then the evidence
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
