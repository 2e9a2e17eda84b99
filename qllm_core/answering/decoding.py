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

    The model is stepped only for a token that is followed by another: the last token
    chosen is never fed.
    """
    text = TextAccumulator(tokenizer, options.stop)
    choose = TokenChooser(options, eos_token_ids, logits.device)
    finish: FinishReason = "length"
    generated = 0
    while generated < options.max_new_tokens:
        token = choose(logits)
        if token in eos_token_ids:
            finish = "eos"
            break
        generated += 1
        if on_token is not None:
            on_token(generated)
        delta = text.add(token)
        if delta:
            yield delta
        if text.stopped:
            finish = "stop"
            break
        if generated < options.max_new_tokens:
            logits = step([token])
    tail = text.flush()
    if tail:
        yield tail
    return Decoded(text=text.text, finish_reason=finish, tokens=generated)
