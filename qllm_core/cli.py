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
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

from .config import MODES, OFFLOAD_DTYPES, PRESETS
from .errors import InvalidOptionError, MemoryFileError, MemoryMismatchError, QLLMError
from .inputs.documents import check_text, read_document, synthetic_document
from .modes import mode_spec
from .options import (
    GenerationOptions,
    check_choice,
    listed,
    number_from_text,
    unknown_option,
)
from .results import Answer, AnswerStats, AnswerStream

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
DTYPES = ("float32", "bfloat16", "float16")
"""Weights' dtypes ``--dtype`` takes."""
_CHOICES: dict[str, Sequence[str]] = {
    "mode": MODES,
    "preset": sorted(PRESETS),
    "dtype": DTYPES,
    "offload_dtype": OFFLOAD_DTYPES,
}
"""Options that name one of a few values, and those values."""
_DECODING_FLAGS = (
    "max_new_tokens",
    "temperature",
    "top_p",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "seed",
)
"""Options checked as :class:`GenerationOptions` (``--max-tokens`` is ``--max-new-tokens``)."""
_FLAG = re.compile(r"--[a-z][a-z0-9-]*")


PLUGIN_GROUP = "quickllama.commands"
"""Entry-point group of commands that live outside ``qllm_core`` (``serve``), which this
module finds by name and never imports by path."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in plugin_commands():
        return run_plugin(argv[0], argv[1:])
    try:
        args = parse_arguments(build_parser(), argv)
    except SystemExit as exit_:  # --help, or a usage error already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
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


def plugin_commands() -> dict[str, Any]:
    """Commands installed by extras (``quickllama[serve]``: ``serve``), by name."""
    from importlib.metadata import entry_points

    return {point.name: point for point in entry_points(group=PLUGIN_GROUP)}


def run_plugin(name: str, argv: Sequence[str]) -> int:
    """Run the installed command ``name`` with ``argv``; its exit status.

    A command whose extra's packages are missing exits 2 with the ``pip`` line that installs
    them.
    """
    try:
        command = plugin_commands()[name].load()
    except ImportError as error:
        _err(
            f"error: `quickllama {name}` needs packages that are not installed ({error.name}); "
            f'install them with: pip install "quickllama[{name}]"'
        )
        return EXIT_USAGE
    return int(command(list(argv)))


def parse_arguments(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse and check ``argv``: a usage error prints usage and a message, and exits 2.

    Every option's value is checked here, before any model code is imported: decoding
    options by :class:`~qllm_core.options.GenerationOptions` (the message the Python API
    and the providers give, with the flag's name), names by the choices they have, and an
    unknown option is answered with the one probably meant (``--max-tokenz``: did you
    mean ``--max-new-tokens``?). ``args.options`` holds the decoding options given, validated.
    """
    args, extras = parser.parse_known_args(argv)
    command: argparse.ArgumentParser = args.command_parser
    if extras:
        command.error(_unexpected(extras, command, args.command))
    try:
        args.options = _checked_options(args)
    except InvalidOptionError as error:
        command.error(error.named(_flag(error.option or "")))
    if getattr(args, "memory", None) and args.mode is not None:
        command.error(
            "--mode cannot be used with --memory: a saved memory keeps the mode it was read "
            "in; to use another, read the document again: quickllama read FILE --save DIR "
            "--mode MODE"
        )
    return args


def _checked_options(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding options given in ``args``, and every named choice, validated.

    Options not given are left out: the engine's defaults apply.
    """
    for name, choices in _CHOICES.items():
        value = getattr(args, name)
        if value is not None:
            check_choice(name, value, choices)
    if args.command == "demo":
        args.tokens = _whole_number("tokens", args.tokens, low=1)
        args.doc_seed = _whole_number("doc_seed", args.doc_seed)
    texts = {name: getattr(args, name) for name in _DECODING_FLAGS}
    given = {name: number_from_text(text) for name, text in texts.items() if text is not None}
    options = GenerationOptions.from_kwargs(**given)
    return {name: getattr(options, name) for name in given}


def _whole_number(name: str, text: str, *, low: int | None = None) -> int:
    """``text`` as an int (of at least ``low``); else :class:`InvalidOptionError`."""
    number = number_from_text(text)
    if not isinstance(number, int) or (low is not None and number < low):
        at_least = f" ≥ {low}" if low is not None else ""
        raise InvalidOptionError.bad_value(name, f"must be a whole number{at_least}, got {text!r}")
    return number


def _unexpected(extras: list[str], command: argparse.ArgumentParser, name: str) -> str:
    """What to say about arguments the command does not take (the first one)."""
    flags = sorted(set(_FLAG.findall(command.format_usage())))
    unknown = next((e for e in extras if e.startswith("-") and e != "-"), None)
    if unknown is not None:
        given = unknown.split("=", 1)[0]
        listing = f"`quickllama {name} --help` lists them"
        return str(unknown_option(given, flags, listing=listing))
    hint = f"; to read it, pass --file {extras[0]}" if "--file" in flags else ""
    return f"unexpected argument {extras[0]!r}{hint}"


def _flag(option: str) -> str:
    """The command-line flag of an option name (``top_p`` -> ``--top-p``)."""
    return "--" + option.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``quickllama`` with its ``ask``, ``read``, ``chat``, ``demo``.

    Values are parsed as text and checked by :func:`parse_arguments`, so every message
    reads the same (``--temperature must be a number ≥ 0 (0 is greedy), got 'hot'``).
    """
    parser = argparse.ArgumentParser(
        prog="quickllama",
        description="Answer questions about documents far longer than the model's context "
        "(Q-LLM: query-aware retrieval of KV memory blocks).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ask = _command(commands, "ask", 256, "ask a question about a document")
    ask.description = "Read a document and answer a question about it."
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
    read = _command(commands, "read", 256, "read a document once and save its memory")
    read.description = (
        "Read a document once (no question) and save the engine's memory of it to a "
        "directory, for `quickllama ask --memory` and `quickllama chat --memory`."
    )
    read.add_argument("file", metavar="PATH", help="UTF-8 text file ('-': standard input)")
    read.add_argument("--save", required=True, metavar="DIR", help="directory to save it to")
    read.set_defaults(run=run_read)
    chat = _command(commands, "chat", 256, "read a document once, then answer each question typed")
    chat.description = (
        "Read a document once, then answer every question typed on standard input (one "
        "per line) from that memory; an empty line or end of input stops."
    )
    chat_source = chat.add_mutually_exclusive_group(required=True)
    chat_source.add_argument("--file", "-f", metavar="PATH", help="UTF-8 text file to read")
    chat_source.add_argument("--memory", metavar="DIR", help="a saved document memory")
    chat.set_defaults(run=run_chat)
    demo = _command(commands, "demo", 16, "find a pass key hidden in ~17K tokens of prose")
    demo.description = (
        "Plant a pass key in the middle of a generated document about twice the embedded "
        "model's trained context, and ask for it."
    )
    demo.add_argument(
        "--tokens", default="17000", metavar="N", help="document length in tokens (17000)"
    )
    demo.add_argument(
        "--doc-seed", default="0", metavar="N", help="seed of the generated document (0)"
    )
    demo.set_defaults(run=run_demo)
    for name in sorted(plugin_commands()):  # run by main() before this parser is used
        commands.add_parser(name, help=f"see `quickllama {name} --help`", add_help=False)
    return parser


def _command(
    commands: Any, name: str, max_new_tokens: int, summary: str
) -> argparse.ArgumentParser:
    """A subcommand with the options every command shares."""
    command: argparse.ArgumentParser = commands.add_parser(
        name, parents=[_common_options(max_new_tokens=max_new_tokens)], help=summary
    )
    command.set_defaults(command_parser=command)
    return command


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
    add("--mode", metavar="MODE", help=f"attention mode: {listed(MODES)} (the config's)")
    add("--preset", metavar="NAME", help=f"engine settings: {listed(sorted(PRESETS))}")
    add(
        "--max-new-tokens",
        "--max-tokens",
        default=str(max_new_tokens),
        metavar="N",
        help=f"answer length limit (default: {max_new_tokens})",
    )
    add("--temperature", metavar="T", help="0 is greedy (default)")
    add("--top-p", metavar="P", help="nucleus sampling mass (default: 1)")
    add(
        "--repetition-penalty",
        metavar="R",
        help="≥ 1: divides the logits of tokens already in the answer (default: 1, off)",
    )
    add(
        "--no-repeat-ngram-size",
        metavar="N",
        help="no run of N tokens twice in the answer (0: off; default: the model's, "
        "6 for the embedded model, else 0)",
    )
    add("--seed", default=None, metavar="N", help="sampling seed")
    add("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    add("--dtype", metavar="DTYPE", help=f"weights' dtype: {listed(DTYPES)} (by device)")
    add(
        "--offload-dtype",
        metavar="DTYPE",
        help=f"memory blocks' host copies: {listed(OFFLOAD_DTYPES)} (float16 halves them)",
    )
    add(
        "--offload-dir",
        default=None,
        help="keep memory blocks in memory-mapped files in this directory (disk tier)",
    )
    add("--no-progress", action="store_true", help="never show the reading progress bar")
    add(
        "--stats",
        action="store_true",
        help="print the stats as JSON on stderr (read, re-read and decode with tokens, "
        "seconds and tokens/s)",
    )
    add("--verbose", "-v", action="store_true", help="log what the engine does")
    return options


def run_ask(args: argparse.Namespace) -> int:
    """``quickllama ask``: read the document (or load its memory), stream the answer."""
    question = check_text("question", args.question)
    if args.memory:
        _check_memory_dir(args.memory)
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
    document: str | None = None
    if args.memory:
        _check_memory_dir(args.memory)
        engine = load_engine(args)
        memory = _load_memory(engine, args.memory)
    else:
        document = _read_input(args.file)
        engine = load_engine(args)
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


def _check_memory_dir(path: str) -> None:
    """Refuse a ``--memory`` that is no directory, before the model loads."""
    if not os.path.isdir(path):
        raise MemoryFileError(
            f"no saved memory at {path}: save one with `quickllama read FILE --save {path}`"
        )


def _load_memory(engine: Any, path: str) -> Any:
    """The memory saved in ``path``; a refusal says what to do on the command line."""
    from .memory.document import DocumentMemory

    try:
        memory = DocumentMemory.load(path, engine)
    except (MemoryFileError, MemoryMismatchError) as error:
        raise type(error)(
            f"{error}\n  on the command line: give the --model and --preset it was read "
            f"with, or read it again: quickllama read FILE --save {path}"
        ) from error
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
    from .spec import EngineSpec

    if not args.verbose:
        _quiet_transformers()
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
    stream: AnswerStream = engine.stream(
        source, question, mode=args.mode if isinstance(source, str) else None, **args.options
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
    """The answer's stats as a JSON-ready dict (``--stats``).

    ``phases`` holds the read, the re-read and the decoding, each with its ``tokens``,
    ``seconds`` and ``tokens_per_second``, as :meth:`AnswerStats.phases` returns them.
    """
    record = dataclasses.asdict(answer.stats)
    record["phases"] = {
        phase: {k: round(v, 3) if k == "seconds" else round(v, 1) for k, v in figures.items()}
        for phase, figures in answer.stats.phases().items()
    }
    record["prefill_tokens_per_second"] = round(answer.stats.prefill_tokens_per_second, 1)
    record["finish_reason"] = answer.finish_reason
    record["wall_seconds"] = round(wall_seconds, 3)
    return record


def summary(answer: Answer, document: str | None, max_blocks: int = 3) -> str:
    """A short human-readable account of the request for stderr (``document``: for excerpts)."""
    stats = answer.stats
    lines = [f"{speed_line(stats)}; mode {stats.mode}, finish {answer.finish_reason}"]
    if stats.reread_tokens:
        lines.append("the passages below were re-read with the model's own attention")
    if not stats.question_found and mode_spec(stats.mode).question_aware:
        lines.append("note: the question's tokens were not found; retrieval used only context")
    in_document = [b for b in stats.retrieved_blocks if b.char_start is not None]
    for block in in_document[:max_blocks]:
        start, end = block.char_start or 0, block.char_end or 0
        how = f"relevance {block.score:.3f}"
        if block.count and not stats.reread_tokens:
            how += f", retrieved {block.count}x while answering"
        if document is None:
            lines.append(f"  block chars {start}-{end} ({how})")
            continue
        excerpt = " ".join(document[start:end].split())
        excerpt = excerpt if len(excerpt) <= 60 else excerpt[:57] + "..."
        lines.append(f"  block chars {start}-{end} ({how}): {excerpt!r}")
    return "\n".join(lines)


def speed_line(stats: AnswerStats) -> str:
    """Read, re-read and decoding, each with its tokens, seconds and tokens per second.

    The figures of :meth:`AnswerStats.phases`; the re-read only when there was one.
    """
    phases = stats.phases()
    words = {"read": "read", "reread": "re-read", "decode": "generated"}
    parts = []
    for phase, figures in phases.items():
        if phase == "reread" and not stats.reread_tokens:
            continue
        tokens = f"{figures['tokens']:,} tokens"
        if phase == "read" and stats.memory_tokens:
            tokens += f" after {stats.memory_tokens:,} from memory"
        rate = figures["tokens_per_second"]
        shown = f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}"
        parts.append(f"{words[phase]} {tokens} in {figures['seconds']:.1f} s ({shown} tok/s)")
    return "; ".join(parts)


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


if __name__ == "__main__":
    sys.exit(main())
