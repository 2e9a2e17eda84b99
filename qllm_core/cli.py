"""The ``quickllama`` command: ask a question about a long document, or run the demo.

    quickllama ask --file report.txt --question "Who signed the contract?"
    cat report.txt | quickllama ask --question "..."
    quickllama read report.txt --save report.qllm      # read once, keep the memory
    quickllama ask --memory report.qllm -q "..."       # answer from it in seconds
    quickllama chat --file report.txt                  # read once, then ask away
    quickllama demo

The answer streams to stdout; progress, stats and errors go to stderr. Errors quickllama
raises on purpose print ``error: <message>`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from .config import MODES, OFFLOAD_DTYPES, PRESETS
from .documents import check_text, read_document, synthetic_document
from .errors import QLLMError
from .results import Answer, AnswerStream
from .spec import EngineSpec

logger = logging.getLogger(__name__)

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: the reader of standard output went away (``| head``)."""
DEMO_PASS_KEY = "71432"
DEMO_FACT = (
    f"Remember this: the secret pass key is {DEMO_PASS_KEY}. The pass key is {DEMO_PASS_KEY}."
)
DEMO_QUESTION = "What is the secret pass key mentioned in the text? Answer with the number."
_CHARS_PER_TOKEN = 4.4
"""About how many characters of the demo's prose make one SmolLM2 token."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error argparse already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        _quiet_transformers()
    try:
        return int(args.run(args))
    except (QLLMError, FileNotFoundError) as error:
        _err(f"error: {error}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        # Standard output was closed early: stop quietly, and keep Python's own flush at
        # exit from raising again on the dead pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``quickllama`` with its ``ask`` and ``demo`` commands."""
    parser = argparse.ArgumentParser(
        prog="quickllama",
        description="Answer questions about documents far longer than the model's context "
        "(Q-LLM: query-aware retrieval of KV memory blocks).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ask = commands.add_parser(
        "ask",
        parents=[_common_options(max_new_tokens=256)],
        help="ask a question about a document",
        description="Read a document and answer a question about it.",
    )
    source = ask.add_mutually_exclusive_group()
    source.add_argument(
        "--file",
        "-f",
        default="-",
        metavar="PATH",
        help="UTF-8 text file to read; '-' or omitted reads standard input",
    )
    source.add_argument(
        "--memory", metavar="DIR", help="a document memory saved by `quickllama read --save`"
    )
    ask.add_argument("--question", "-q", required=True, help="the question to answer")
    ask.set_defaults(run=run_ask)
    read = commands.add_parser(
        "read",
        parents=[_common_options(max_new_tokens=256)],
        help="read a document once and save its memory",
        description="Read a document once (no question) and save the engine's memory of it "
        "to a directory, for `quickllama ask --memory` and `quickllama chat --memory`.",
    )
    read.add_argument("file", metavar="PATH", help="UTF-8 text file ('-': standard input)")
    read.add_argument("--save", required=True, metavar="DIR", help="directory to save it to")
    read.set_defaults(run=run_read)
    chat = commands.add_parser(
        "chat",
        parents=[_common_options(max_new_tokens=256)],
        help="read a document once, then answer each question typed",
        description="Read a document once, then answer every question typed on standard "
        "input (one per line) from that memory; an empty line or end of input stops.",
    )
    chat_source = chat.add_mutually_exclusive_group(required=True)
    chat_source.add_argument("--file", "-f", metavar="PATH", help="UTF-8 text file to read")
    chat_source.add_argument("--memory", metavar="DIR", help="a saved document memory")
    chat.set_defaults(run=run_chat)
    demo = commands.add_parser(
        "demo",
        parents=[_common_options(max_new_tokens=16)],
        help="find a pass key hidden in ~17K tokens of prose",
        description="Plant a pass key in the middle of a generated document about twice the "
        "embedded model's trained context, and ask for it.",
    )
    demo.add_argument(
        "--tokens",
        type=_positive_int,
        default=17_000,
        help="approximate document length in tokens (default: 17000)",
    )
    demo.add_argument(
        "--doc-seed", type=int, default=0, help="seed of the generated document (default: 0)"
    )
    demo.set_defaults(run=run_demo)
    return parser


def _common_options(*, max_new_tokens: int) -> argparse.ArgumentParser:
    # A fresh parent per command: argparse shares parents' actions, defaults included.
    options = argparse.ArgumentParser(add_help=False)
    add = options.add_argument
    add(
        "--model",
        "-m",
        default=None,
        help="local model dir, .gguf file or hub id (default: embedded SmolLM2-135M-Instruct)",
    )
    add("--mode", choices=MODES, default=None, help="attention mode (default: the config's)")
    add(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="engine configuration preset (default: the model's own)",
    )
    add(
        "--max-new-tokens",
        type=_positive_int,
        default=max_new_tokens,
        help=f"answer length limit (default: {max_new_tokens})",
    )
    add("--temperature", type=_non_negative_float, default=0.0, help="0 is greedy (default)")
    add("--top-p", type=_probability, default=1.0, help="nucleus sampling mass (default: 1)")
    add("--seed", type=int, default=None, help="sampling seed")
    add("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    add(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="weights' dtype (default: float32 on cpu, bfloat16 on gpu)",
    )
    add(
        "--offload-dtype",
        choices=OFFLOAD_DTYPES,
        default=None,
        help="dtype of the memory blocks' host copies (float16 halves their size)",
    )
    add(
        "--offload-dir",
        default=None,
        help="keep memory blocks in memory-mapped files in this directory (disk tier)",
    )
    add("--no-progress", action="store_true", help="never show the prefill progress bar")
    add("--stats", action="store_true", help="print the full stats as JSON on stderr")
    add("--verbose", "-v", action="store_true", help="log what the engine does")
    return options


def run_ask(args: argparse.Namespace) -> int:
    """``quickllama ask``: read the document (or load its memory), stream the answer."""
    question = check_text("question", args.question)
    if args.memory:
        engine = load_engine(args)
        _answer(engine, _load_memory(engine, args.memory), question, args, document=None)
        return 0
    document = _read_input(args.file)
    engine = load_engine(args)
    _answer(engine, document, question, args, document=document)
    return 0


def run_read(args: argparse.Namespace) -> int:
    """``quickllama read``: read the document once and save its memory."""
    document = _read_input(args.file)
    engine = load_engine(args)
    memory = engine.read(document, mode=args.mode)
    memory.save(args.save)
    _err(
        f"read {memory.tokens:,} tokens in {memory.read_seconds:.1f} s (mode {memory.mode}); "
        f"saved {memory.nbytes / 2**20:,.0f} MiB of memory to {args.save}"
    )
    return 0


def run_chat(args: argparse.Namespace) -> int:
    """``quickllama chat``: read once, then answer each question typed, from the memory."""
    engine = load_engine(args)
    document: str | None = None
    if args.memory:
        memory = _load_memory(engine, args.memory)
    else:
        document = _read_input(args.file)
        memory = engine.read(document, mode=args.mode)
        _err(f"read {memory.tokens:,} tokens in {memory.read_seconds:.1f} s (mode {memory.mode})")
    _err("ask a question (an empty line or Ctrl-D ends)")
    while True:
        sys.stderr.write("> ")
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line.strip():
            return 0
        try:
            _answer(engine, memory, line.strip(), args, document=document)
        except QLLMError as error:  # a bad question ends that question, not the chat
            _err(f"error: {error}")


def _load_memory(engine: Any, path: str) -> Any:
    from .document_memory import DocumentMemory

    memory = DocumentMemory.load(path, engine)
    _err(f"loaded the memory of {memory.tokens:,} tokens (mode {memory.mode}) from {path}")
    return memory


def run_demo(args: argparse.Namespace) -> int:
    """``quickllama demo``: the pass-key test on a document beyond the trained context."""
    started = time.perf_counter()
    n_chars = int(args.tokens * _CHARS_PER_TOKEN)
    document = synthetic_document(n_chars, seed=args.doc_seed, fact=DEMO_FACT, at=0.5)
    engine = load_engine(args)
    n_tokens = engine.count_tokens(document)
    _err(f"demo: {n_tokens:,} tokens of prose with a pass key planted in the middle")
    _err(f"question: {DEMO_QUESTION}")
    answer = _answer(engine, document, DEMO_QUESTION, args, document=document)
    found = DEMO_PASS_KEY in answer.text
    verdict = "found" if found else "NOT found"
    seconds = time.perf_counter() - started
    _err(f"pass key {DEMO_PASS_KEY}: {verdict} in the answer; demo took {seconds:.1f} s in all")
    return 0


def load_engine(args: argparse.Namespace) -> Any:
    """The engine for ``args`` (model, preset, device, dtype, progress)."""
    offload = {"offload_dtype": args.offload_dtype, "offload_dir": args.offload_dir}
    spec = EngineSpec(
        source=args.model,
        preset=args.preset,
        overrides={k: v for k, v in offload.items() if v is not None},
        device=args.device,
        dtype=args.dtype,
    )
    started = time.perf_counter()
    engine = _engine_class().from_pretrained(
        source=spec.source,
        config=spec.resolved_config(),
        device=spec.device,
        dtype=spec.torch_dtype(),
        progress=False if args.no_progress else None,
    )
    logger.info("loaded %s in %.1f s", engine.model_name, time.perf_counter() - started)
    return engine


def _engine_class() -> Any:
    """``QLLMEngine``, imported only when a command needs it (tests swap it for a fake)."""
    from .engine import QLLMEngine

    return QLLMEngine


def _answer(
    engine: Any,
    source: Any,
    question: str,
    args: argparse.Namespace,
    *,
    document: str | None,
) -> Answer:
    """Stream the answer to stdout, then print stats to stderr; returns the answer.

    ``source``: the document text or a document memory; ``document``: the text, for the
    evidence excerpts (``None``: none shown).
    """
    from_memory = not isinstance(source, str)
    stream: AnswerStream = engine.stream(
        source,
        question,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        mode=None if from_memory else args.mode,
    )
    started = time.perf_counter()
    with stream:  # closed however the loop ends (a broken pipe, Ctrl-C)
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        answer = stream.collect()
    if args.stats:
        _err(json.dumps(stats_record(answer, time.perf_counter() - started), indent=2))
    else:
        _err(summary(answer, document))
    return answer


def stats_record(answer: Answer, wall_seconds: float) -> dict[str, Any]:
    """The answer's stats as a JSON-ready dict (``--stats``)."""
    record = dataclasses.asdict(answer.stats)
    record["prefill_tokens_per_second"] = round(answer.stats.prefill_tokens_per_second, 1)
    record["finish_reason"] = answer.finish_reason
    record["wall_seconds"] = round(wall_seconds, 3)
    return record


def summary(answer: Answer, document: str | None, max_blocks: int = 3) -> str:
    """A short human-readable account of the request for stderr (``document``: for excerpts)."""
    stats = answer.stats
    reused = f" after {stats.memory_tokens:,} from memory" if stats.memory_tokens else ""
    lines = [
        f"read {stats.tokens_read:,} tokens{reused} in {stats.prefill_seconds:.1f} s "
        f"({stats.prefill_tokens_per_second:,.0f} tok/s); generated {stats.tokens_generated} "
        f"tokens in {stats.decode_seconds:.1f} s; mode {stats.mode}, finish {answer.finish_reason}"
    ]
    if stats.reread_tokens:
        lines.append(
            f"re-read {stats.reread_tokens:,} document tokens of the passages below with the "
            "model's own attention"
        )
    if not stats.question_found and stats.mode == "qllm":
        lines.append("note: the question's tokens were not found; retrieval used only context")
    in_document = [b for b in stats.retrieved_blocks if b.char_start is not None]
    for block in in_document[:max_blocks]:
        start, end = block.char_start or 0, block.char_end or 0
        how = f"relevance {block.score:.3f}" if stats.reread_tokens else f"chosen {block.count}x"
        if document is None:
            lines.append(f"  block chars {start}-{end} ({how})")
            continue
        excerpt = " ".join(document[start:end].split())
        excerpt = excerpt if len(excerpt) <= 60 else excerpt[:57] + "..."
        lines.append(f"  block chars {start}-{end} ({how}): {excerpt!r}")
    return "\n".join(lines)


def _read_input(path: str) -> str:
    if path != "-":
        return read_document(path)
    if sys.stdin is None or sys.stdin.isatty():
        raise QLLMError("no document: pass --file PATH, or pipe the text on standard input")
    return read_document(sys.stdin)


def _quiet_transformers() -> None:
    """Hide transformers' weight-loading bars; our own prefill bar is the one that matters."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _err(text: str) -> None:
    print(text, file=sys.stderr)  # noqa: T201


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())
