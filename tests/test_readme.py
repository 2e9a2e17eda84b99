"""The README's Python examples run as written, on the tiny model.

Every ```python block of README.md runs, in order, in one namespace (as a reader pastes
them into one session), in a temporary folder holding ``report.txt``. Only loading the
embedded model is swapped, for the tiny random Llama with the same tokenizer
(``QLLMEngine.from_pretrained``, which the providers' engine registry calls too): a
missing import, a renamed argument or a wrong attribute in the README fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from tiny_models import TINY_ENGINE_CONFIG, make_tiny_model

from qllm_core.engine import QLLMEngine

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPET = re.compile(r"```python\n(.*?)```", re.DOTALL)
REPORT = (
    " ".join(
        f"Clause {i}: the supplier delivers {i * 3} crates of tea each month." for i in range(16)
    )
    + " The contract was signed by Ada Lovelace on 3 March 2024."
)
"""About 300 tokens: several memory blocks of the tiny config, read in a fraction of a second."""
ANSWER_TOKENS = 4
"""Answers are cut at this many tokens (the random model never stops by itself)."""


class QuickEngine(QLLMEngine):
    """The tiny engine, answering in :data:`ANSWER_TOKENS` tokens at most."""

    def stream(self, document: Any, question: str, **options: Any) -> Any:
        options["max_new_tokens"] = min(options.get("max_new_tokens") or 256, ANSWER_TOKENS)
        return super().stream(document, question, **options)

    def stream_ids(self, input_ids: Any, **options: Any) -> Any:
        options["max_new_tokens"] = min(options.get("max_new_tokens") or 256, ANSWER_TOKENS)
        return super().stream_ids(input_ids, **options)


def snippets() -> list[str]:
    """The README's Python examples, in order."""
    return SNIPPET.findall(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_examples() -> None:
    assert len(snippets()) >= 4


def test_the_readme_examples_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenizer: Any
) -> None:
    model = make_tiny_model("llama", vocab_size=len(tokenizer))
    tiny = QuickEngine(model, tokenizer, config=TINY_ENGINE_CONFIG, progress=False)
    monkeypatch.setattr(QLLMEngine, "from_pretrained", classmethod(lambda cls, *a, **k: tiny))
    monkeypatch.setattr("qllm_integrations.engines._engines", {})  # none cached yet
    monkeypatch.setattr("qllm_integrations.engines._key_locks", {})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "report.txt").write_text(REPORT, encoding="utf-8")
    namespace: dict[str, Any] = {"__name__": "readme"}
    for number, code in enumerate(snippets(), start=1):
        try:
            exec(compile(code, f"README.md python example {number}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"README example {number} fails:\n{code}") from error
