"""Answer a question about whole files with Q-LLM through LlamaIndex, with evidence.

    python examples/llamaindex_whole_document.py [DIRECTORY] [QUESTION] [--stream]

Without arguments it writes a small demo corpus to a temporary directory. The embedded
SmolLM2-135M model is used; on CPU expect about a minute per few thousand tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from llama_index.core import SimpleDirectoryReader

from qllm_integrations.llamaindex import QLLM, WholeDocumentQueryEngine

FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
FACT = "The pass key is 58213. Remember it. 58213 is the pass key. "


def demo_corpus(folder: Path) -> Path:
    """Two text files; the second hides a pass key in the middle of filler text."""
    (folder / "a_preface.txt").write_text(
        "There is an important info hidden inside a lot of irrelevant text. " + FILLER * 20
    )
    (folder / "b_log.txt").write_text(FILLER * 60 + FACT + FILLER * 60)
    return folder


async def stream_answer(engine: WholeDocumentQueryEngine, question: str) -> None:
    response = await engine.aquery(question)
    async for piece in response.async_response_gen():
        print(piece, end="", flush=True)
    print()
    show_sources(response.source_nodes)


def show_sources(source_nodes) -> None:
    for source in source_nodes:
        meta = source.node.metadata
        text = " ".join(source.node.get_content().split())
        print(
            f"  [{source.score:.0%}] {meta['title']} chars {meta['char_start']}-"
            f"{meta['char_end']}: {text[:120]}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", help="folder of text files (default: a demo)")
    parser.add_argument("question", nargs="?", default="What is the pass key?")
    parser.add_argument("--stream", action="store_true", help="stream the answer (async)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.directory) if args.directory else demo_corpus(Path(scratch))
        llm = QLLM(max_new_tokens=24)
        engine = WholeDocumentQueryEngine.from_reader(
            SimpleDirectoryReader(str(folder)), llm=llm, streaming=args.stream
        )
        print(f"read {len(engine.joined.sources)} documents, {len(engine.document):,} chars")
        print(f"Q: {args.question}")
        if args.stream:
            asyncio.run(stream_answer(engine, args.question))
            return
        response = engine.query(args.question)
        print(f"A: {response}")
        usage = response.metadata["usage"]
        print(f"({usage['input_tokens']:,} tokens read, {usage['output_tokens']} generated)")
        show_sources(response.source_nodes)


if __name__ == "__main__":
    main()
