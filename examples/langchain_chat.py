"""Ask ChatQLLM about a whole document through an LCEL chain, streaming the answer.

    python examples/langchain_chat.py                       # a generated 40K-char chronicle
    python examples/langchain_chat.py report.txt "Who signed the contract?"

Uses the embedded SmolLM2-135M-Instruct model (converted once on first use, ~35 s). No
splitter, no vector store: the model reads the whole document, and Q-LLM recalls the parts
relevant to the question.
"""

from __future__ import annotations

import sys

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from qllm_core import QLLMError
from qllm_core.inputs.documents import read_document, synthetic_document
from qllm_integrations.langchain import ChatQLLM, get_evidence

FACT = "The pass key to the harbour archive is 71432."


def main(argv: list[str]) -> int:
    if len(argv) == 2:
        document, question = read_document(argv[0]), argv[1]
    else:
        document = synthetic_document(40_000, fact=FACT, at=0.3)
        question = "What is the pass key to the harbour archive?"
    chat = ChatQLLM(max_new_tokens=64)
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "Answer from this document.\n\n{document}"),  # the document
            ("human", "{question}"),  # the question
        ]
    )
    chain = prompt | chat | StrOutputParser()
    try:
        for piece in chain.stream({"document": document, "question": question}):
            print(piece, end="", flush=True)
    except (QLLMError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print()

    # The same chain keeping the evidence next to the answer: one more line.
    with_evidence = prompt | chat | {"answer": StrOutputParser(), "evidence": get_evidence}
    out = with_evidence.invoke({"document": document, "question": question})
    for passage in out["evidence"]:
        quote = " ".join(passage.text.split())[:120]
        print(f"  evidence (score {passage.score:.2f}): {quote!r}", file=sys.stderr)

    # Without a template: pass the document explicitly and read the metadata.
    reply = chat.invoke(question, document=document)
    stats = reply.response_metadata["qllm"]
    print(
        f"route {reply.response_metadata['split_route']}: {stats['tokens_read']} tokens read "
        f"in {stats['seconds']:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
