"""Next-token choice, against the hand-written sampler it replaced, and stop strings.

The engine-level tests force the tiny model's logits (a hook on its forward) so that an
answer loops by construction: the repetition options must break the loop, and leave
everything else as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Iterator

import numpy as np
import pytest
import torch

import qllm_core.answering.decoding as decoding_module
from qllm_core.answering.sampling import TextAccumulator, TokenChooser
from qllm_core.errors import InvalidOptionError
from qllm_core.options import GenerationOptions


class _CharTokenizer:
    """Token i is the character chr(i)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def _feed(acc: TextAccumulator, text: str) -> list[str]:
    out = []
    for ch in text:
        out.append(acc.add(ord(ch)))
        if acc.stopped:
            break
    out.append(acc.flush())
    return out


def test_stop_string_cuts_text_and_is_never_emitted_in_part():
    acc = TextAccumulator(_CharTokenizer(), ["END", "\n\n"])
    pieces = _feed(acc, "answer: 42 ENDING")
    assert acc.stopped and acc.text == "answer: 42 "
    assert "".join(pieces) == "answer: 42 "
    assert all("E" not in p for p in pieces)


def test_without_stop_every_character_arrives():
    acc = TextAccumulator(_CharTokenizer(), [])
    pieces = _feed(acc, "héllo")
    assert pieces[:5] == list("héllo") and not acc.stopped


# --- the sampler this replaced, kept only as the reference ------------------------------


def _old_next_token(
    logits: torch.Tensor, *, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """qllm_core.answering.sampling.next_token before the logits processors, verbatim."""
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


class _OldChooser:
    """The engine's decode loop before: min_new_tokens by index_fill, then the old formula."""

    def __init__(self, options: GenerationOptions, eos: Collection[int]) -> None:
        self.options, self.eos, self.generated = options, sorted(eos), 0
        self.generator = None
        if options.seed is not None:
            self.generator = torch.Generator().manual_seed(options.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        if self.generated < self.options.min_new_tokens and self.eos:
            held_off = torch.tensor(self.eos, dtype=torch.long, device=logits.device)
            logits = logits.index_fill(0, held_off, float("-inf"))
        self.generated += 1
        return _old_next_token(
            logits,
            temperature=self.options.temperature,
            top_p=self.options.top_p,
            generator=self.generator,
        )


# (vocab, logit scale, dtype): odd sizes, flat to peaked, and the embedded model's vocab
GRID = [
    (27, 0.5, torch.float32),
    (61, 3.0, torch.float32),
    (113, 10.0, torch.bfloat16),
    (4099, 3.0, torch.float32),
    (49152, 4.0, torch.float32),
]


@pytest.mark.parametrize(("vocab", "scale", "dtype"), GRID)
@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.0, 1.5])
@pytest.mark.parametrize("top_p", [1.0, 0.95, 0.5])
def test_same_tokens_as_the_old_sampler_when_the_new_options_are_off(
    vocab: int, scale: float, dtype: torch.dtype, temperature: float, top_p: float
) -> None:
    make = torch.Generator().manual_seed(vocab)
    seeds, steps = (range(2), 3) if vocab > 10_000 else (range(12), 6)
    for seed in seeds:
        options = GenerationOptions.from_kwargs(
            temperature=temperature, top_p=top_p, seed=seed, min_new_tokens=seed % 3
        )
        eos = {seed % vocab, 5}
        new, old = TokenChooser(options, eos), _OldChooser(options, eos)
        for _ in range(steps):  # one answer: the generator's state runs on between draws
            logits = (torch.randn(vocab, generator=make) * scale).to(dtype)
            assert new(logits) == old(logits), (seed, new.tokens)


def test_the_global_generator_without_a_seed_as_before() -> None:
    logits = torch.randn(500, generator=torch.Generator().manual_seed(0)) * 2
    options = GenerationOptions.from_kwargs(temperature=1.0, top_p=0.9)
    draws = []
    for chooser in (TokenChooser(options, ()), _OldChooser(options, ())):
        torch.manual_seed(11)
        draws.append([chooser(logits) for _ in range(20)])
    assert draws[0] == draws[1]


# --- what the new options do ------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"repetition_penalty": 0.9},
            "repetition_penalty must be a number ≥ 1 (1 is off), got 0.9",
        ),
        ({"repetition_penalty": float("nan")}, "repetition_penalty must be a number ≥ 1"),
        ({"repetition_penalty": True}, "repetition_penalty must be a number ≥ 1"),
        ({"repetition_penalty": "1.2"}, "repetition_penalty must be a number ≥ 1"),
        ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size must be an int from 0 (off) to"),
        ({"no_repeat_ngram_size": 2.0}, "no_repeat_ngram_size must be an int"),
        ({"repeat_penalty": 1.1}, "did you mean 'repetition_penalty'?"),
    ],
)
def test_repetition_options_are_validated(given: dict, message: str) -> None:
    with pytest.raises(InvalidOptionError) as raised:
        GenerationOptions.from_kwargs(**given)
    assert message in str(raised.value)


def test_repetition_options_default_off_and_take_numpy_and_ints() -> None:
    default = GenerationOptions()
    assert default.repetition_penalty == 1.0 and default.no_repeat_ngram_size == 0
    assert default == GenerationOptions.from_kwargs(
        repetition_penalty=None, no_repeat_ngram_size=None
    )
    options = GenerationOptions.from_kwargs(repetition_penalty=2, no_repeat_ngram_size=np.int64(3))
    assert options.repetition_penalty == 2.0 and isinstance(options.repetition_penalty, float)
    assert options.no_repeat_ngram_size == 3 and type(options.no_repeat_ngram_size) is int


def _choose(chooser: TokenChooser, next_logits: Callable[[list[int]], torch.Tensor], n: int):
    for _ in range(n):
        chooser(next_logits(chooser.tokens))
    return chooser.tokens


def _scores(vocab: int, by_token: dict[int, float]) -> torch.Tensor:
    scores = torch.full((vocab,), -10.0)
    for token, score in by_token.items():
        scores[token] = score
    return scores


@pytest.mark.parametrize(
    ("penalty", "expected"),
    [
        (1.0, [3, 3, 3, 3]),
        (1.05, [3, 3, 3, 3]),  # 3.0 / 1.05 still beats 2.8: a small penalty keeps the choice
        (1.2, [3, 4, 3, 3]),  # 3.0 / 1.2 = 2.5 < 2.8; once both are penalized, 3 leads again
    ],
)
def test_repetition_penalty_divides_positive_logits(penalty: float, expected: list[int]) -> None:
    options = GenerationOptions.from_kwargs(repetition_penalty=penalty)
    logits = _scores(17, {3: 3.0, 4: 2.8})
    assert _choose(TokenChooser(options, ()), lambda _: logits, 4) == expected


def test_repetition_penalty_multiplies_negative_logits() -> None:
    options = GenerationOptions.from_kwargs(repetition_penalty=1.2)
    logits = _scores(17, {3: -1.0, 4: -1.1})  # -1.0 * 1.2 = -1.2 < -1.1
    assert _choose(TokenChooser(options, ()), lambda _: logits, 2) == [3, 4]


def _cycle(tokens: list[int]) -> torch.Tensor:
    """A model stuck in a loop: 1 -> 2 -> 3 -> 1; then 29, 28, ... as lesser choices."""
    after = {1: 2, 2: 3, 3: 1}.get(tokens[-1] if tokens else 0, 1)
    scores = torch.zeros(31)
    scores[10:30] = torch.arange(20.0) / 10  # lesser choices: 29 best, then 28, ...
    scores[after] = 10.0
    return scores


def _ngrams(tokens: list, n: int) -> list[tuple]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_no_repeat_ngram_size_bars_every_repeated_ngram(size: int) -> None:
    looping = _choose(TokenChooser(GenerationOptions(), ()), _cycle, 15)
    assert looping == [1, 2, 3] * 5
    options = GenerationOptions.from_kwargs(no_repeat_ngram_size=size)
    tokens = _choose(TokenChooser(options, ()), _cycle, 15)
    grams = _ngrams(tokens, size)
    assert len(set(grams)) == len(grams), tokens
    assert tokens[: size + 2] == looping[: size + 2]  # nothing barred before a repeat
    sampled = GenerationOptions.from_kwargs(no_repeat_ngram_size=size, temperature=1.0, seed=0)
    grams = _ngrams(_choose(TokenChooser(sampled, ()), _cycle, 15), size)
    assert len(set(grams)) == len(grams)


def test_min_new_tokens_bars_the_end_of_sequence_until_reached() -> None:
    options = GenerationOptions.from_kwargs(min_new_tokens=2, repetition_penalty=1.5)
    logits = _scores(17, {0: 5.0, 7: 1.0})  # 0 is the end of sequence; the processors compose
    assert _choose(TokenChooser(options, {0}), lambda _: logits, 3) == [7, 7, 0]


# --- in the engine ----------------------------------------------------------------------

DOC = "The flag of the harbour is red green blue. " * 6
QUESTION = "Which colours does the flag show, red green or blue?"


@contextlib.contextmanager
def _forced_logits(engine, next_logits: Callable[[int], torch.Tensor]) -> Iterator[None]:
    """Every forward of ``engine.model`` returns ``next_logits(last input token)``."""

    def hook(module, args, kwargs, output):
        last = int(kwargs["input_ids"][0, -1])
        forced = next_logits(last).to(output.logits.dtype)
        output.logits = forced.expand_as(output.logits).clone()
        return output

    handle = engine.model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def test_the_engine_breaks_a_loop_with_no_repeat_ngram_size(tiny_engine) -> None:
    names = ("red", "green", "blue", "one", "two", "three", "four")
    ids = {w: tiny_engine.tokenizer.encode(" " + w, add_special_tokens=False) for w in names}
    assert all(len(i) == 1 for i in ids.values())
    red, green, blue, *lesser = (ids[w][0] for w in names)
    after = {red: green, green: blue, blue: red}

    def looping(last: int) -> torch.Tensor:
        scores = torch.full((len(tiny_engine.tokenizer),), -10.0)
        scores[lesser] = torch.tensor([4.0, 3.0, 2.0, 1.0])
        scores[after.get(last, red)] = 10.0
        return scores

    with _forced_logits(tiny_engine, looping):
        loop = tiny_engine.answer(DOC, QUESTION, max_new_tokens=12)
        guarded = tiny_engine.answer(DOC, QUESTION, max_new_tokens=12, no_repeat_ngram_size=3)
    assert loop.text == " red green blue" * 4
    words = guarded.text.split()
    assert guarded.finish_reason == "length" and len(words) == 12
    # the prompt's "red green blue" is not barred: only the answer's own n-grams are
    assert words[:6] == ["red", "green", "blue", "red", "green", "one"]
    assert len(set(_ngrams(words, 3))) == 10


def test_the_engine_applies_repetition_penalty_to_the_answer_only(tiny_engine) -> None:
    red, green = (
        tiny_engine.tokenizer.encode(w, add_special_tokens=False)[0] for w in [" red", " green"]
    )

    def preferring_red(last: int) -> torch.Tensor:
        scores = torch.full((len(tiny_engine.tokenizer),), -10.0)
        scores[red], scores[green] = 3.0, 2.8
        return scores

    with _forced_logits(tiny_engine, preferring_red):
        texts = [
            tiny_engine.answer(DOC, QUESTION, max_new_tokens=4, repetition_penalty=p).text
            for p in (1.0, 1.05, 1.2)
        ]
    # " red" fills the prompt, yet the first answer token is " red": the prompt is not penalized
    assert texts == [" red red red red", " red red red red", " red green red red"]


def test_the_engine_chooses_as_the_old_sampler_did(tiny_engine, monkeypatch) -> None:
    """Both samplers see the same logits at every step of real answers, and agree."""
    pairs: list[tuple[int, int]] = []

    class Both(TokenChooser):
        def __init__(self, options, eos, device="cpu"):
            super().__init__(options, eos, device)
            self.old = _OldChooser(options, eos)

        def __call__(self, logits):
            new = super().__call__(logits)
            pairs.append((new, self.old(logits)))
            return new

    monkeypatch.setattr(decoding_module, "TokenChooser", Both)
    runs = [
        {},
        {"min_new_tokens": 3},
        {"temperature": 1.0, "seed": 1},
        {"temperature": 0.7, "top_p": 0.9, "seed": 2},
    ]
    for options in runs:
        tiny_engine.answer(DOC, QUESTION, max_new_tokens=6, **options)
    assert len(pairs) >= len(runs)
    assert all(new == old for new, old in pairs), pairs
