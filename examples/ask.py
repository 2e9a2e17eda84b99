"""Ask a question about a text file with the Python API, streaming the answer.

    python examples/ask.py report.txt "Who signed the contract?"

Uses the embedded SmolLM2-135M-Instruct model (converted once on first use, ~35 s).
"""

from __future__ import annotations

import sys

from qllm_core import QLLMError
from qllm_core.engine import QLLMEngine
from qllm_core.inputs.documents import read_document


def main(path: str, question: str) -> int:
    try:
        document = read_document(path)  # refuses binary and non-UTF-8 files with a hint
        engine = QLLMEngine.from_pretrained()
        stream = engine.stream(document, question, max_new_tokens=128)
        for piece in stream:
            print(piece, end="", flush=True)
    except (QLLMError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print()
    answer = stream.result
    assert answer is not None
    stats = answer.stats
    print(
        f"{stats.tokens_read} tokens read in {stats.prefill_seconds:.1f} s, "
        f"{stats.tokens_generated} generated in {stats.decode_seconds:.1f} s",
        file=sys.stderr,
    )
    for block in stats.retrieved_blocks[:3]:
        if block.char_start is not None:
            print(f"  evidence: {document[block.char_start : block.char_end]!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python examples/ask.py FILE QUESTION")
    sys.exit(main(sys.argv[1], sys.argv[2]))
