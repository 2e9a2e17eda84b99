"""Decoding: the answer's tokens, one forward step each, from the logits a read left.

The last stage of a request (read, re-read, decode): it knows nothing of how the prompt
was read, only the :class:`~qllm_core.models.forward.Forward` that feeds the model one token at
a time and the last position's logits.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass
from typing import Any

import torch

from ..models.forward import Forward
from ..options import GenerationOptions
from ..results import FinishReason
from .sampling import TextAccumulator, TokenChooser


@dataclass(frozen=True)
class Decoded:
    """What decoding produced: the whole text, why it ended, how many tokens it chose."""

    text: str
    finish_reason: FinishReason
    tokens: int


class Decoder:
    """One answer's decoding, a token at a time: choose, add to the text, stop.

    :meth:`advance` takes the logits a step gave and chooses the next token; the caller
    feeds :attr:`token` to the model while :attr:`finish_reason` is ``None``. The same
    state serves :func:`decode` (one request) and the batching scheduler (many).
    """

    def __init__(
        self,
        options: GenerationOptions,
        tokenizer: Any,
        eos_token_ids: Collection[int],
        device: torch.device | str = "cpu",
    ) -> None:
        self._text = TextAccumulator(tokenizer, options.stop)
        self._choose = TokenChooser(options, eos_token_ids, device)
        self._eos, self._max = eos_token_ids, options.max_new_tokens
        self.tokens = 0
        """Tokens chosen into the answer so far."""
        self.token = -1
        """The last token chosen, to feed next."""
        self.finish_reason: FinishReason | None = None if self._max > 0 else "length"

    def advance(self, logits: torch.Tensor) -> str:
        """Choose the next token from ``logits`` (vocab,); return the text that became certain.

        Ends the answer (:attr:`finish_reason`) at an end-of-sequence token (not part of
        it), a stop string, or ``max_new_tokens``.
        """
        token = self._choose(logits)
        if token in self._eos:
            self.finish_reason = "eos"
            return ""
        self.tokens += 1
        self.token = token
        delta = self._text.add(token)
        if self._text.stopped:
            self.finish_reason = "stop"
        elif self.tokens >= self._max:
            self.finish_reason = "length"
        return delta

    def flush(self) -> str:
        """The text held back (a possible stop string), once the answer has ended."""
        return self._text.flush()

    def result(self) -> Decoded:
        """The answer decoded (call once :attr:`finish_reason` is set)."""
        return Decoded(self._text.text, self.finish_reason or "length", self.tokens)


def decode(
    step: Forward,
    logits: torch.Tensor,
    options: GenerationOptions,
    tokenizer: Any,
    eos_token_ids: Collection[int],
    on_token: Callable[[int], None] | None = None,
) -> Generator[str, None, Decoded]:
    """Yield the answer's text deltas; return the :class:`Decoded` answer.

    Args:
        step: feeds one chosen token and returns the next logits, shape (vocab,).
        logits: (vocab,) the last prompt position's logits.
        options: ``max_new_tokens``, ``stop`` and the choice options (``TokenChooser``).
        tokenizer: decodes the chosen tokens to text.
        eos_token_ids: tokens that end the answer (not part of it, finish ``eos``).
        on_token: called with the count of tokens chosen so far, after each one.

    The step first makes room for the answer (:meth:`Forward.reserve`); the model is
    stepped only for a token that is followed by another: the last token chosen is never
    fed.
    """
    with torch.inference_mode():
        step.reserve(options.max_new_tokens)
    decoder = Decoder(options, tokenizer, eos_token_ids, logits.device)
    while decoder.finish_reason is None:
        delta = decoder.advance(logits)
        if on_token is not None and decoder.finish_reason != "eos":
            on_token(decoder.tokens)
        if delta:
            yield delta
        if decoder.finish_reason is None:
            logits = step([decoder.token])
    tail = decoder.flush()
    if tail:
        yield tail
    return decoder.result()
