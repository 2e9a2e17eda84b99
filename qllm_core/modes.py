"""The mode table: per mode, which stages a request runs and where its keys and values live.

Every decision that depends on the mode reads its :class:`ModeSpec` here; no other module
compares mode names. Adding a mode is one entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["auto", "qllm", "infllm", "streaming", "full"]


@dataclass(frozen=True)
class ModeSpec:
    """How requests in one mode are read and answered."""

    name: str
    block_memory: bool
    """Read through the engine's attention over a request's block memory (the Q-LLM
    family); else with the model's own attention and transformers' KV cache."""
    keeps_all_tokens: bool
    """Every token's keys and values are kept: as retrievable memory blocks once they leave
    the local window, or in the KV cache (streaming drops them: it keeps only the initial
    tokens and the window)."""
    question_aware: bool
    """The question vector steers block retrieval (``question_weight``; InfLLM: never)."""
    rereads: bool
    """A read may be followed by a re-read of the passages the question attended to most
    (when ``reread_tokens`` > 0): only where blocks were kept to rank."""
    resolved: bool = True
    """False for ``auto``: the concrete mode is chosen per request (:func:`resolve`)."""


_TABLE = (
    # name, block memory, keeps all tokens, question aware, re-reads
    ("auto", False, False, False, False),
    ("qllm", True, True, True, True),
    ("infllm", True, True, False, True),
    ("streaming", True, False, False, False),
    ("full", False, True, False, False),
)
MODE_TABLE: dict[str, ModeSpec] = {
    name: ModeSpec(name, memory, keeps, aware, rereads, resolved=name != "auto")
    for name, memory, keeps, aware, rereads in _TABLE
}
MODES: tuple[str, ...] = tuple(MODE_TABLE)

NATIVE_MODE = "full"
"""The mode that reads with the model's own attention: ``auto`` within the window, and
every re-read."""
MEMORY_MODE = "qllm"
"""The mode ``auto`` chooses beyond the window."""


def mode_spec(mode: str) -> ModeSpec:
    """The table's entry for ``mode`` (a validated config's mode is always in it)."""
    return MODE_TABLE[mode]


def resolve(mode: str, fits_window: bool) -> str:
    """A concrete mode: ``mode`` itself, or (``auto``) one chosen by the request's length.

    ``auto`` becomes :data:`NATIVE_MODE` when the request fits the model's window
    (``fits_window``), :data:`MEMORY_MODE` beyond.
    """
    if mode_spec(mode).resolved:
        return mode
    return NATIVE_MODE if fits_window else MEMORY_MODE
