"""Decoding options of one request, validated strictly before any work is done.

One function validates every option for the engine, the CLI and the providers, so a bad
value is refused with the same :class:`~qllm_core.errors.InvalidOptionError`, naming the
option, wherever it comes from, and before the document is read.
"""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeGuard

from .errors import InvalidOptionError

MAX_NEW_TOKENS_LIMIT = 1_048_576
"""Largest ``max_new_tokens`` accepted (the default ``max_input_tokens``)."""

MAX_STOP_STRINGS = 64
"""Most stop strings one request may carry."""


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
    seed: int | None = None
    """Seed of the sampling generator (``None``: the global RNG)."""
    stop: tuple[str, ...] = ()
    """Strings that end the answer (not included in it)."""

    def __post_init__(self) -> None:
        _check_all(self)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_kwargs(cls, **options: Any) -> GenerationOptions:
        """Validate ``options`` (keyword names as in the fields) and build the options.

        ``None`` for any option means its default; ``stop`` may be a str or a sequence of
        str. Raises :class:`InvalidOptionError` naming the option (for an unknown name, the
        closest valid one).
        """
        names = cls.names()
        for name in options:
            if name not in names:
                close = difflib.get_close_matches(str(name), names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ";"
                raise InvalidOptionError(
                    f"unknown option {name!r}{hint} valid options: {', '.join(names)}"
                )
        values = {k: v for k, v in options.items() if v is not None or k == "seed"}
        for name in ("max_new_tokens", "min_new_tokens", "seed"):  # numpy and torch ints too
            value = values.get(name)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool):
                values[name] = int(value)
        if "stop" in values:
            values["stop"] = _stop_strings(values["stop"])
        if "temperature" in values:
            values["temperature"] = _number("temperature", values["temperature"])
        if "top_p" in values:
            values["top_p"] = _number("top_p", values["top_p"])
        return cls(**values)


def _check_all(opts: GenerationOptions) -> None:
    n = _int_between("max_new_tokens", opts.max_new_tokens, 1, MAX_NEW_TOKENS_LIMIT)
    _int_between("min_new_tokens", opts.min_new_tokens, 0, n, f"max_new_tokens ({n:,})")
    temperature = _number("temperature", opts.temperature)
    if not math.isfinite(temperature) or temperature < 0:
        raise InvalidOptionError(
            f"temperature must be a finite number >= 0 (0 is greedy), got {opts.temperature!r}"
        )
    top_p = _number("top_p", opts.top_p)
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise InvalidOptionError(f"top_p must be in (0, 1], got {opts.top_p!r}")
    if opts.seed is not None and not _is_int(opts.seed):
        raise InvalidOptionError(f"seed must be an int or None, got {_shown(opts.seed)}")
    if opts.seed is not None and not -(2**63) <= opts.seed < 2**64:
        raise InvalidOptionError(f"seed must be between -2**63 and 2**64 - 1, got {opts.seed}")
    if not isinstance(opts.stop, tuple) or not all(isinstance(s, str) for s in opts.stop):
        raise InvalidOptionError(f"stop must be a tuple of str, got {_shown(opts.stop)}")


def _int_between(name: str, value: object, low: int, high: int, high_text: str = "") -> int:
    """``value`` when it is an int in ``[low, high]``; else :class:`InvalidOptionError`.

    ``high_text``: how the message names ``high`` (by default, its value).
    """
    if not _is_int(value):
        raise InvalidOptionError(f"{name} must be an int, got {_shown(value)}")
    if not low <= value <= high:
        bound = high_text or f"{high:,}"
        raise InvalidOptionError(f"{name} must be between {low} and {bound}, got {value:,}")
    return value


def _stop_strings(stop: object) -> tuple[str, ...]:
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, Sequence) or isinstance(stop, bytes | bytearray):
        raise InvalidOptionError(f"stop must be a str or a list of str, got {_shown(stop)}")
    if len(stop) > MAX_STOP_STRINGS:
        raise InvalidOptionError(f"stop has {len(stop)} strings; at most {MAX_STOP_STRINGS}")
    for i, item in enumerate(stop):
        if not isinstance(item, str):
            raise InvalidOptionError(f"stop[{i}] must be a str, got {_shown(item)}")
    return tuple(s for s in stop if s)


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidOptionError(f"{name} must be a number, got {_shown(value)}")
    return float(value)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
