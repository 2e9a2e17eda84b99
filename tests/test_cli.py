"""The ``quickllama`` command line, driven with a fake engine (no model, no downloads)."""

from __future__ import annotations

import io
import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from qllm_core import cli
from qllm_core.config import QLLMConfig
from qllm_core.errors import InputTooLongError
from qllm_core.results import Answer, AnswerStats, AnswerStream, RetrievedBlock


class FakeEngine:
    """Records how it was built and asked; streams a canned answer."""

    instances: list[FakeEngine] = []
    pieces: tuple[str, ...] = ("The answer", " is ", "42.")
    error: Exception | None = None
    stats: dict[str, Any] = {}
    """Fields of the answer's stats to set (over the defaults below)."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.model_name = "fake"

    @classmethod
    def from_pretrained(cls, **kwargs: Any) -> FakeEngine:
        engine = cls(**kwargs)
        cls.instances.append(engine)
        return engine

    def count_tokens(self, text: str) -> int:
        return len(text) // 4

    def stream(self, document: str, question: str, **options: Any) -> AnswerStream:
        self.calls.append((document, question, options))
        if self.error is not None:
            raise self.error
        text = "".join(self.pieces)
        blocks = (
            RetrievedBlock(10, 20, 7, char_start=4, char_end=30, score=0.5),
            RetrievedBlock(0, 5, 3, None, None),
        )
        fields = {
            "mode": options.get("mode") or "qllm",
            "tokens_read": 1234,
            "tokens_generated": 3,
            "prefill_seconds": 2.0,
            "decode_seconds": 0.5,
            "question_found": True,
            "retrieved_blocks": blocks,
        }
        stats = AnswerStats(**{**fields, **self.stats})

        def pieces() -> Generator[str, None, Answer]:
            yield from self.pieces
            return Answer(text=text, finish_reason="eos", stats=stats)

        return AnswerStream(pieces())


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> type[FakeEngine]:
    FakeEngine.instances = []
    FakeEngine.error = None
    FakeEngine.stats = {}
    monkeypatch.setattr(cli, "_engine_class", lambda: FakeEngine)
    monkeypatch.setattr(cli, "_quiet_transformers", lambda: None)
    return FakeEngine


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    path = tmp_path / "doc.txt"
    path.write_text("Once upon a time the answer was forty-two.\n", encoding="utf-8")
    return path


def test_ask_streams_answer_and_summary(
    engine: type[FakeEngine], doc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["ask", "--file", str(doc), "--question", "What is it?"]) == 0
    out, err = capsys.readouterr()
    assert out == "The answer is 42.\n"
    assert "read 1,234 tokens in 2.0 s (617 tok/s)" in err
    assert "block chars 4-30 (relevance 0.500, retrieved 7x while answering): 'upon a time" in err
    (built,) = engine.instances
    assert built.kwargs == {
        "source": None,
        "config": QLLMConfig.preset("smollm2"),  # the embedded model's own
        "device": None,
        "dtype": None,
        "progress": None,
    }
    document, question, options = built.calls[0]
    assert document.startswith("Once upon") and question == "What is it?"
    # only the flags given (and each command's answer length): the rest are the engine's
    assert options == {"max_new_tokens": 256, "mode": None}


def test_ask_passes_options(engine: type[FakeEngine], doc: Path) -> None:
    argv = [
        "ask",
        "-f",
        str(doc),
        "-q",
        "Why?",
        "--model",
        "/m.gguf",
        "--mode",
        "infllm",
        "--preset",
        "mistral",
        "--max-new-tokens",
        "7",
        "--temperature",
        "0.7",
        "--top-p",
        "0.9",
        "--repetition-penalty",
        "1.2",
        "--no-repeat-ngram-size",
        "4",
        "--seed",
        "5",
        "--device",
        "cpu",
        "--dtype",
        "bfloat16",
        "--offload-dtype",
        "float16",
        "--offload-dir",
        "/var/tmp",
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    (built,) = engine.instances
    import torch

    assert built.kwargs == {
        "source": "/m.gguf",
        "config": QLLMConfig.preset("mistral", offload_dtype="float16", offload_dir="/var/tmp"),
        "device": "cpu",
        "dtype": torch.bfloat16,
        "progress": False,
    }
    assert built.calls[0][2] == {
        "max_new_tokens": 7,
        "temperature": 0.7,
        "top_p": 0.9,
        "repetition_penalty": 1.2,
        "no_repeat_ngram_size": 4,
        "seed": 5,
        "mode": "infllm",
    }


def test_stats_json(
    engine: type[FakeEngine], doc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["ask", "--file", str(doc), "-q", "Q?", "--stats"]) == 0
    record = json.loads(capsys.readouterr().err)
    assert record["tokens_read"] == 1234
    assert record["finish_reason"] == "eos"
    assert record["prefill_tokens_per_second"] == 617.0
    assert record["retrieved_blocks"][0] == {
        "token_start": 10,
        "token_end": 20,
        "count": 7,
        "char_start": 4,
        "char_end": 30,
        "score": 0.5,
    }


def test_reads_stdin(
    engine: type[FakeEngine], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO("Piped text: café.".encode()), encoding="utf-8")
    monkeypatch.setattr("sys.stdin", stdin)
    assert cli.main(["ask", "--question", "Q?"]) == 0
    assert engine.instances[0].calls[0][0] == "Piped text: café."
    assert capsys.readouterr().out == "The answer is 42.\n"


def test_terminal_stdin_is_an_error(
    engine: type[FakeEngine], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal())
    assert cli.main(["ask", "--file", "-", "--question", "Q?"]) == 2
    assert "error: no document: pass --file PATH" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x00\x01binary", "binary"),
        ("caf\xe9".encode("latin-1"), "not valid UTF-8"),
        (b"  \n ", "document is empty"),
    ],
)
def test_bad_documents_exit_2_before_loading(
    engine: type[FakeEngine],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    expected: str,
) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    assert cli.main(["ask", "--file", str(path), "--question", "Q?"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and expected in err
    assert "Traceback" not in err and out == ""
    assert engine.instances == []


def test_missing_file_and_empty_question(
    engine: type[FakeEngine], doc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["ask", "--file", "/no/such.txt", "--question", "Q?"]) == 2
    assert "error: document not found: /no/such.txt" in capsys.readouterr().err
    assert cli.main(["ask", "--file", str(doc), "--question", "  "]) == 2
    assert "error: the question is empty" in capsys.readouterr().err
    assert engine.instances == []


def test_engine_errors_exit_2(
    engine: type[FakeEngine], doc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine.error = InputTooLongError("the prompt has 9 tokens; max_input_tokens is 8")
    assert cli.main(["ask", "--file", str(doc), "--question", "Q?"]) == 2
    err = capsys.readouterr().err
    assert err == "error: the prompt has 9 tokens; max_input_tokens is 8\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["ask", "--file", "x"],
        ["ask", "-q", "Q", "--top-p", "0"],
        ["ask", "-q", "Q", "--max-new-tokens", "0"],
        ["ask", "-q", "Q", "--mode", "fast"],
        ["ask", "-q", "Q", "--temperature", "-1"],
        ["ask", "-q", "Q", "--preset", "nope"],
        [],
    ],
)
def test_usage_errors_exit_2(
    engine: type[FakeEngine], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    assert "usage: quickllama" in capsys.readouterr().err
    assert engine.instances == []


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ask", "--help"]) == 0
    assert "--question" in capsys.readouterr().out


def test_demo_plants_pass_key_beyond_trained_context(
    engine: type[FakeEngine], capsys: pytest.CaptureFixture[str]
) -> None:
    engine.pieces = ("The pass key is ", cli.DEMO_PASS_KEY, ".")
    try:
        assert cli.main(["demo", "--no-progress"]) == 0
    finally:
        engine.pieces = FakeEngine.pieces
    document, question, options = engine.instances[0].calls[0]
    assert question == cli.DEMO_QUESTION
    assert document.count(cli.DEMO_PASS_KEY) == 2  # once planted fact, stated twice
    assert 0.4 < document.index(cli.DEMO_PASS_KEY) / len(document) < 0.6
    assert len(document) > 16_000 * 4  # ~17K tokens: twice SmolLM2's 8K context
    assert options["max_new_tokens"] == 16
    out, err = capsys.readouterr()
    assert cli.DEMO_PASS_KEY in out
    assert f"pass key {cli.DEMO_PASS_KEY}: found" in err


def test_prefill_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    from qllm_core.progress import prefill_progress

    hidden = prefill_progress(100, enabled=None)  # pytest's stderr is not a terminal
    hidden.update(40)
    hidden.close()
    assert capsys.readouterr().err == ""
    shown = prefill_progress(100, enabled=True)
    shown.update(40)
    shown.close()
    err = capsys.readouterr().err
    assert "reading" in err and "/100" in err and "tok/s" in err


def test_summary_of_a_reread_names_its_passages_by_relevance():
    from qllm_core.cli import summary
    from qllm_core.results import Answer, AnswerStats, RetrievedBlock

    passage = RetrievedBlock(
        token_start=3, token_end=9, count=1, char_start=4, char_end=10, score=0.25
    )
    stats = AnswerStats(
        mode="qllm",
        tokens_read=40,
        tokens_generated=2,
        prefill_seconds=1.0,
        decode_seconds=0.5,
        question_found=True,
        retrieved_blocks=(passage,),
        reread_tokens=6,
        reread_seconds=0.5,
    )
    text = summary(Answer(text="x", finish_reason="eos", stats=stats), "0123456789abcdef")
    assert "re-read 6 tokens in 0.5 s (12.0 tok/s)" in text
    assert "the passages below were re-read" in text
    assert "block chars 4-10 (relevance 0.250): '456789'" in text


def test_stats_report_read_reread_and_decode_as_the_engine_does(
    engine: type[FakeEngine], doc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A follow-up from a memory: 40 question tokens read, 3,000 re-read, 3 generated.
    engine.stats = {"tokens_read": 40, "prefill_seconds": 8.0, "reread_tokens": 3000}
    engine.stats |= {"reread_seconds": 7.5, "memory_tokens": 16_000}
    assert cli.main(["ask", "--file", str(doc), "-q", "Q?"]) == 0
    line = capsys.readouterr().err.splitlines()[0]
    assert line.startswith(
        "read 40 tokens after 16,000 from memory in 0.5 s (80.0 tok/s); "
        "re-read 3,000 tokens in 7.5 s (400 tok/s); generated 3 tokens in 0.5 s (6.0 tok/s)"
    )
    assert cli.main(["ask", "--file", str(doc), "-q", "Q?", "--stats"]) == 0
    record = json.loads(capsys.readouterr().err)
    assert record["phases"] == {
        "read": {"tokens": 40, "seconds": 0.5, "tokens_per_second": 80.0},
        "reread": {"tokens": 3000, "seconds": 7.5, "tokens_per_second": 400.0},
        "decode": {"tokens": 3, "seconds": 0.5, "tokens_per_second": 6.0},
    }
    assert record["reread_seconds"] == 7.5


USAGE_ERRORS = {
    "temperature": (["--temperature", "hot"], "--temperature must be a number ≥ 0"),
    "misspelled": (["--max-tokenz", "5"], "did you mean '--max-new-tokens'?"),
    "llama.cpp name": (["--n-predict", "5"], "did you mean '--max-new-tokens'?"),
    "python name": (["--top_p", "0.5"], "did you mean '--top-p'?"),
    "mode": (["--mode", "qlm"], "or full, got 'qlm'; did you mean 'qllm'?"),
    "top-p": (["--top-p", "0"], "--top-p must be a number in (0, 1], got 0"),
    "max-new-tokens": (["--max-new-tokens", "1.5"], "--max-new-tokens must be an int from 1"),
    "repetition-penalty": (
        ["--repetition-penalty", "0.8"],
        "--repetition-penalty must be a number ≥ 1 (1 is off), got 0.8",
    ),
    "no-repeat-ngram-size": (
        ["--no-repeat-ngram-size", "two"],
        "--no-repeat-ngram-size must be an int from 0 (off) to 1,048,576, got 'two'",
    ),
    "Ollama name": (["--repeat-penalty", "1.1"], "did you mean '--repetition-penalty'?"),
    "positional": (["doc.txt"], "unexpected argument 'doc.txt'; to read it, pass --file doc.txt"),
    "mode of a memory": (["--memory", ".", "--mode", "full"], "--mode cannot be used with"),
}


@pytest.mark.parametrize("case", USAGE_ERRORS)
def test_usage_errors_say_what_to_do(
    engine: type[FakeEngine], case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    extra, expected = USAGE_ERRORS[case]
    assert cli.main(["ask", "-q", "Q?", *extra]) == 2
    err = capsys.readouterr().err
    usage, message = err.split("quickllama ask: error: ")
    assert usage.startswith("usage: quickllama ask")
    assert expected in message
    assert engine.instances == []


def test_an_option_error_reads_as_in_python_with_the_flag(
    engine: type[FakeEngine], capsys: pytest.CaptureFixture[str]
) -> None:
    from qllm_core.errors import InvalidOptionError
    from qllm_core.options import GenerationOptions

    with pytest.raises(InvalidOptionError) as raised:
        GenerationOptions.from_kwargs(temperature="hot")
    assert cli.main(["ask", "-q", "Q?", "--temperature", "hot"]) == 2
    assert f"error: --{raised.value}\n" in capsys.readouterr().err


def test_demo_counts_are_checked(engine: type[FakeEngine], capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["demo", "--tokens", "lots"]) == 2
    assert "--tokens must be a whole number ≥ 1, got 'lots'" in capsys.readouterr().err


def test_max_tokens_is_max_new_tokens(engine: type[FakeEngine], doc: Path) -> None:
    assert cli.main(["ask", "-f", str(doc), "-q", "Q?", "--max-tokens", "7"]) == 0
    assert engine.instances[0].calls[0][2]["max_new_tokens"] == 7


@pytest.mark.parametrize("command", ["ask", "chat"])
def test_a_missing_memory_is_named_before_loading(
    engine: type[FakeEngine], command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, "--memory", str(tmp_path / "gone.qllm")] + (["-q", "Q?"] * (command == "ask"))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"no saved memory at {tmp_path / 'gone.qllm'}" in err
    assert "quickllama read FILE --save" in err
    assert engine.instances == []


USAGE_ARGV = ["ask", "-q", "Q?", "--temperature", "hot"]


def test_a_usage_error_imports_no_torch() -> None:
    """What makes a usage error answer in well under a second (torch takes seconds)."""
    import subprocess
    import sys

    code = (
        "import sys; from qllm_core import cli; "
        f"rc = cli.main({USAGE_ARGV!r}); print(rc, 'torch' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.split() == ["2", "False"], run.stderr
