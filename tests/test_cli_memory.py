"""``quickllama read`` / ``ask --memory`` / ``chat``, end to end on the tiny model."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from tiny_models import TINY_ENGINE_CONFIG, make_tiny_model

from qllm_core import QLLMEngine, cli

DOCUMENT = " ".join(f"Locker {i} holds the number {i * 37 % 101}." for i in range(120))
QUESTIONS = ("Which number does locker 17 hold?", "What is in locker 80?")


@pytest.fixture
def engine_class(monkeypatch: pytest.MonkeyPatch, tokenizer: Any) -> type[QLLMEngine]:
    """The CLI's engine: the tiny random Llama (same seed, so every load is the same model)."""

    class Tiny(QLLMEngine):
        @classmethod
        def from_pretrained(cls, *args: Any, **kwargs: Any) -> Tiny:
            model = make_tiny_model("llama", vocab_size=len(tokenizer))
            return cls(model, tokenizer, config=TINY_ENGINE_CONFIG, progress=False)

    monkeypatch.setattr(cli, "_engine_class", lambda: Tiny)
    return Tiny


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    path = tmp_path / "lockers.txt"
    path.write_text(DOCUMENT, encoding="utf-8")
    return path


def expected_answers(engine_class: type[QLLMEngine], n: int) -> list[str]:
    engine = engine_class.from_pretrained()
    memory = engine.read(DOCUMENT)
    return [engine.answer(memory, q, max_new_tokens=n).text for q in QUESTIONS]


def test_read_save_then_ask_from_the_memory(engine_class, doc, tmp_path, capsys):
    saved = tmp_path / "lockers.qllm"
    assert cli.main(["read", str(doc), "--save", str(saved)]) == 0
    assert (saved / "memory.json").is_file()
    assert "saved" in capsys.readouterr().err
    argv = ["ask", "--memory", str(saved), "-q", QUESTIONS[0], "--max-new-tokens", "8"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert out == expected_answers(engine_class, 8)[0] + "\n"
    assert "loaded the memory" in err and "from memory" in err


def test_chat_reads_once_and_answers_each_line(engine_class, doc, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(QUESTIONS) + "\n\n"))
    reads = []
    original = engine_class.read
    monkeypatch.setattr(
        engine_class, "read", lambda self, *a, **k: reads.append(1) or original(self, *a, **k)
    )
    assert cli.main(["chat", "--file", str(doc), "--max-new-tokens", "6"]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines() == expected_answers(engine_class, 6)
    assert len(reads) == 2  # the chat's one read, and the expected answers' own


def test_ask_with_a_missing_memory_exits_2(engine_class, tmp_path, capsys):
    assert cli.main(["ask", "--memory", str(tmp_path / "none"), "-q", "Why?"]) == 2
    assert "no saved memory at" in capsys.readouterr().err
    assert cli.main(["ask", "--memory", str(tmp_path), "-q", "Why?"]) == 2  # no memory.json
    err = capsys.readouterr().err
    assert "memory.json is missing" in err
    advice = err.split("\n  on the command line: ")[1]
    assert advice == (
        "give the --model and --preset it was read with, or read it again: "
        f"quickllama read FILE --save {tmp_path}\n"
    )


def test_ask_takes_a_file_or_a_memory_not_both(engine_class, doc, tmp_path, capsys):
    argv = ["ask", "--file", str(doc), "--memory", str(tmp_path), "-q", "Why?"]
    assert cli.main(argv) == 2
    assert "not allowed with argument" in capsys.readouterr().err
