"""Next-token choice and incremental detokenization with stop strings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def next_token(
    logits: torch.Tensor, *, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """Greedy when ``temperature == 0``; else nucleus sampling. logits: (vocab,)."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


class TextAccumulator:
    """Turns generated token ids into text deltas, cutting at the first stop string.

    Text that could still become a stop string, or an incomplete multi-byte character,
    is held back until it is certain.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self._tokenizer = tokenizer
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._ids: list[int] = []
        self.text = ""
        self._emitted = 0
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Add a token; return the text that became certain."""
        self._ids.append(token_id)
        self.text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        cut = min((i for i in (self.text.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = self.text[:cut], True
            return self.flush()
        safe = len(self.text) - self._hold
        if self.text.endswith("\ufffd"):
            safe = min(safe, len(self.text) - 1)
        return self._emit(safe)

    def flush(self) -> str:
        """All text not yet returned."""
        return self._emit(len(self.text))

    def _emit(self, end: int) -> str:
        if end <= self._emitted:
            return ""
        delta, self._emitted = self.text[self._emitted : end], end
        return delta
