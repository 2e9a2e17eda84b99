"""Decoding options of one request, validated strictly before any work is done.

One module validates every option for the engine, the CLI and the providers, so a bad
value or an unknown name is refused with the same
:class:`~qllm_core.errors.InvalidOptionError` text wherever it comes from (the CLI only
spells the option as its flag), naming the option and, for an unknown name, the one
probably meant, before the document is read. It imports nothing heavy: the CLI checks its
arguments with it before torch is loaded.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypeGuard, TypeVar

from .errors import InvalidOptionError

MAX_NEW_TOKENS_LIMIT = 1_048_576
"""Largest ``max_new_tokens`` accepted (the default ``max_input_tokens``)."""

MAX_STOP_STRINGS = 64
"""Most stop strings one request may carry."""

ALIASES: Mapping[str, str] = {"max_tokens": "max_new_tokens"}
"""Other spellings the providers and the CLI accept for an option (``--max-tokens``),
with the name each stands for."""

HINTS: Mapping[str, str] = {
    "source": "model",
    "model_name": "model",
    "num_output": "max_new_tokens",
    "max_length": "max_new_tokens",
    "num_predict": "max_new_tokens",
    "n_predict": "max_new_tokens",
    "temp": "temperature",
    "repeat_penalty": "repetition_penalty",
    "preset": "config",
}
"""Names other libraries and tools use (LlamaIndex, transformers, Ollama, llama.cpp), and
the option meant by each: suggested in error messages, never accepted silently."""

T = TypeVar("T")


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding settings of one request; construct with :meth:`from_kwargs` to validate."""

    max_new_tokens: int = 256
    """Answer length limit in tokens, 1 to :data:`MAX_NEW_TOKENS_LIMIT`."""
    min_new_tokens: int = 0
    """Tokens generated before an end-of-sequence token may end the answer, 0 to
    ``max_new_tokens`` (a stop string still ends it): for answers of a fixed length."""
    temperature: float = 0.0
    """0 is greedy; else a finite number > 0 that divides the logits."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]."""
    repetition_penalty: float = 1.0
    """A number ≥ 1 (1 is off): the logit of every token already in the answer is divided
    by it when positive, multiplied by it when negative (transformers' option of that
    name, over the answer's tokens only, not the prompt)."""
    no_repeat_ngram_size: int = 0
    """An int ≥ 0 (0 is off): no run of this many tokens appears twice in the answer
    (transformers' option of that name, over the answer's tokens only)."""
    seed: int | None = None
    """Seed of the sampling generator (``None``: the global RNG)."""
    stop: tuple[str, ...] = ()
    """Strings that end the answer (not included in it)."""

    def __post_init__(self) -> None:
        _check_all(self)
        for name in ("temperature", "top_p", "repetition_penalty"):  # ints kept as floats
            object.__setattr__(self, name, float(getattr(self, name)))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_kwargs(cls, **options: Any) -> GenerationOptions:
        """Validate ``options`` (keyword names as in the fields) and build the options.

        ``None`` for any option means its default; ``stop`` may be a str or a sequence of
        str. Raises :class:`InvalidOptionError` naming the option (for an unknown name, the
        one probably meant).
        """
        return cls().with_options(**options)

    @classmethod
    def default_for(cls, source: object | None) -> GenerationOptions:
        """The decoding defaults of an engine on ``source`` (as ``QLLMConfig.default_for``).

        The embedded SmolLM2-135M (``None``) never repeats a run of 6 tokens in an answer
        (``no_repeat_ngram_size=6``): it stopped every answer loop on the paired passages
        benchmark with no sample lost (BENCHMARKS.md); other models: the class defaults.
        """
        return cls(no_repeat_ngram_size=6) if source is None else cls()

    def with_options(self, **options: Any) -> GenerationOptions:
        """These options with ``options`` given over them, validated as by :meth:`from_kwargs`.

        ``None`` for an option keeps this one's value (``seed=None`` too).
        """
        check_names(options, self.names())
        values = {k: v for k, v in options.items() if v is not None}
        for name in _INT_NAMES:  # numpy and torch ints too
            value = values.get(name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                values[name] = int(value)
        if "stop" in values:
            values["stop"] = _stop_strings(values["stop"])
        return replace(self, **values)


_INT_NAMES = ("max_new_tokens", "min_new_tokens", "no_repeat_ngram_size", "seed")
"""The int options."""

_NUMBER_RULES: Mapping[str, tuple[str, Callable[[float], bool]]] = {
    "temperature": ("a number ≥ 0 (0 is greedy)", lambda t: t >= 0),
    "top_p": ("a number in (0, 1]", lambda p: 0 < p <= 1),
    "repetition_penalty": ("a number ≥ 1 (1 is off)", lambda r: r >= 1),
}
"""What each float option must be: as the error messages say it, and the finite values
it takes."""


def check_names(
    names: Iterable[str], valid: Sequence[str], *, where: str = "", aliases: bool = False
) -> None:
    """Raise for the first name not in ``valid`` (nor, with ``aliases``, an alias of one).

    Raises:
        InvalidOptionError: from :func:`unknown_option`.
    """
    for name in names:
        if name not in valid and not (aliases and ALIASES.get(name) in valid):
            raise unknown_option(name, valid, where=where)


def unknown_option(
    name: str, valid: Sequence[str], *, where: str = "", listing: str | None = None
) -> InvalidOptionError:
    """The error for an unknown option ``name``: the one probably meant, and the valid ones.

    Args:
        name: the name given.
        valid: the names accepted there.
        where: who got it (``"ChatQLLM"``, ``"the call"``, ``"quickllama ask"``).
        listing: what to say instead of listing ``valid`` (the CLI points at ``--help``).
    """
    close = closest_name(name, valid)
    hint = f"; did you mean {close!r}?" if close else ";"
    lead = f"{where} got an unknown option" if where else "unknown option"
    tail = listing if listing is not None else f"valid options: {', '.join(valid)}"
    return InvalidOptionError(f"{lead} {name!r}{hint} {tail}")


def closest_name(name: str, valid: Sequence[str]) -> str | None:
    """The valid name ``name`` probably means, or ``None``.

    Names are compared without leading dashes and with ``-`` read as ``_``, so this works
    for keyword names and command-line flags alike: the target of an alias or a hint
    (:data:`ALIASES`, :data:`HINTS`) when it is valid, else the closest spelling.
    """
    by_key = {_key(v): v for v in valid}
    key = _key(name)
    for table in (ALIASES, HINTS):
        if table.get(key) in by_key:
            return by_key[table[key]]
    spellings = [*by_key, *(alias for alias, target in ALIASES.items() if target in by_key)]
    close = difflib.get_close_matches(key, spellings, n=1)
    if not close:
        return None
    return by_key[close[0]] if close[0] in by_key else by_key[ALIASES[close[0]]]


def check_choice(name: str, value: T, choices: Sequence[T]) -> T:
    """``value`` when it is one of ``choices``; else an error naming them (and the closest).

    Raises:
        InvalidOptionError: ``"{name} must be one of ..., got ...; did you mean ...?"``.
    """
    if value in choices:
        return value
    texts = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), texts, n=1) if isinstance(value, str) else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    problem = f"must be one of {listed(texts)}, got {shown(value)}{hint}"
    raise InvalidOptionError.bad_value(name, problem)


def listed(names: Sequence[str]) -> str:
    """``names`` as a sentence lists them: ``"a, b or c"``."""
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


def number_from_text(text: str) -> int | float | str:
    """A command-line value as the number it spells (int first), else the text unchanged.

    The text is then validated like any keyword value, so ``--temperature hot`` gets the
    same message as ``temperature="hot"``.
    """
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            continue
    return text


def _key(name: str) -> str:
    return str(name).lstrip("-").replace("-", "_").lower()


def _check_all(opts: GenerationOptions) -> None:
    n = _int_between("max_new_tokens", opts.max_new_tokens, 1, MAX_NEW_TOKENS_LIMIT)
    _int_between("min_new_tokens", opts.min_new_tokens, 0, n, f"max_new_tokens ({n:,})")
    for name, (rule, takes) in _NUMBER_RULES.items():
        value = getattr(opts, name)
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not (real and math.isfinite(value) and takes(float(value))):
            raise _bad(name, rule, value)
    _int_between(
        "no_repeat_ngram_size", opts.no_repeat_ngram_size, 0, MAX_NEW_TOKENS_LIMIT, "", "0 (off)"
    )
    if opts.seed is not None:
        _int_between("seed", opts.seed, -(2**63), 2**64 - 1, "2**64 - 1", "-2**63")
    if not isinstance(opts.stop, tuple) or not all(isinstance(s, str) for s in opts.stop):
        raise _bad("stop", "a tuple of str", opts.stop)


def _int_between(
    name: str, value: object, low: int, high: int, high_text: str = "", low_text: str = ""
) -> int:
    """``value`` when it is an int in ``[low, high]``; else :class:`InvalidOptionError`.

    ``high_text``/``low_text``: how the message names the bounds (by default, their values).
    """
    if not _is_int(value) or not low <= value <= high:
        bounds = f"{low_text or low} to {high_text or f'{high:,}'}"
        raise _bad(name, f"an int from {bounds}", value)
    return value


def _stop_strings(stop: object) -> tuple[str, ...]:
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, Sequence) or isinstance(stop, bytes | bytearray):
        raise _bad("stop", "a str or a list of str", stop)
    if len(stop) > MAX_STOP_STRINGS:
        raise InvalidOptionError.bad_value(
            "stop", f"must hold at most {MAX_STOP_STRINGS} strings, got {len(stop)}"
        )
    for i, item in enumerate(stop):
        if not isinstance(item, str):
            raise _bad(f"stop[{i}]", "a str", item)
    return tuple(s for s in stop if s)


def _bad(name: str, requirement: str, value: object) -> InvalidOptionError:
    return InvalidOptionError.bad_value(name, f"must be {requirement}, got {shown(value)}")


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def shown(value: object) -> str:
    """``value`` as error messages show it: its repr, shortened.

    The type's name comes first when the repr alone does not tell it (not a str, number,
    bool or ``None``).
    """
    text = repr(value)
    text = text if len(text) <= 40 else text[:37] + "..."
    plain = value is None or isinstance(value, str | int | float)
    return text if plain else f"{type(value).__name__} {text}"
