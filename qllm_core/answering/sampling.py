"""Next-token choice through transformers' logits processors; text with stop strings.

The scores are shaped as transformers' ``generate`` shapes them, with its own processors
and in its order, so every option means what it means there; what differs is the history
they see: the answer's own tokens, never the prompt (see :class:`TokenChooser`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, cast

import torch
from transformers import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from ..options import GenerationOptions


class TokenChooser:
    """Chooses each token of one answer from the model's logits, and keeps the answer's tokens.

    Each choice runs, in ``generate``'s order: ``repetition_penalty`` (the logit of every
    token already in the answer is divided by it when positive, multiplied when negative),
    ``no_repeat_ngram_size`` (a token that would complete an n-gram the answer already
    holds is barred), ``min_new_tokens`` (the end-of-sequence tokens are barred until the
    answer has that many tokens); then greedy (``temperature`` 0) takes the highest score,
    else the logits are divided by ``temperature``, cut to the ``top_p`` nucleus, and one
    token is drawn on the CPU with a ``torch.Generator`` seeded by ``seed`` (without one,
    torch's global generator). An option that is off adds no processor, so
    with the penalty and the n-gram guard off the choices are those of the hand-written
    sampler this replaced, token for token (``tests/test_sampling.py`` keeps it as the
    reference; only a token whose place in the ``top_p`` nucleus rests on float32
    rounding of the cumulative mass, summed in the other order, could tell them apart).

    The penalty and the n-gram guard see the answer's tokens only, not the prompt.
    ``generate`` applies them over the whole ``input_ids``; over a document of 100K tokens
    that is slow (each step scans the whole history) and wrong for an answer about it,
    which must be free to quote the document's names and numbers.
    """

    def __init__(
        self,
        options: GenerationOptions,
        eos_token_ids: Collection[int],
        device: torch.device | str = "cpu",
    ) -> None:
        """``eos_token_ids``: the tokens ``min_new_tokens`` holds off; ``device``: the logits'."""
        self._device = torch.device(device)
        self._greedy = options.temperature == 0
        self._generator = None
        if options.seed is not None:
            self._generator = torch.Generator().manual_seed(options.seed)
        self._processors = LogitsProcessorList()
        if options.repetition_penalty != 1:
            self._processors.append(RepetitionPenaltyLogitsProcessor(options.repetition_penalty))
        if options.no_repeat_ngram_size:
            self._processors.append(NoRepeatNGramLogitsProcessor(options.no_repeat_ngram_size))
        if options.min_new_tokens and eos_token_ids:
            eos = torch.tensor(sorted(eos_token_ids), device=self._device)
            self._processors.append(
                MinNewTokensLengthLogitsProcessor(0, options.min_new_tokens, eos)
            )
        if not self._greedy:
            self._processors.append(TemperatureLogitsWarper(options.temperature))
            if options.top_p < 1:
                self._processors.append(TopPLogitsWarper(options.top_p))
        self.tokens: list[int] = []
        """The tokens chosen so far, in order."""

    def __call__(self, logits: torch.Tensor) -> int:
        """Choose the next token and add it to :attr:`tokens`.

        Args:
            logits: (vocab,) the model's scores for the next token, any float dtype, on
                the ``device`` given.
        """
        scores = logits.float()[None]  # (1, vocab): processors take a batch
        if self._processors:
            history = torch.tensor([self.tokens], dtype=torch.long, device=self._device)
            history = cast(torch.LongTensor, history)  # (1, answer tokens so far)
            scores = self._processors(history, scores)
        if self._greedy:
            token = int(scores.argmax())
        else:
            probs = torch.softmax(scores[0], dim=-1).cpu()
            token = int(torch.multinomial(probs, 1, generator=self._generator))
        self.tokens.append(token)
        return token


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
