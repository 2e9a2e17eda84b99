"""The four tasks, generated on the fly from a seed: nothing is downloaded.

- ``passkey``: a 5-digit pass key hidden in repeated filler (the classic pass key test).
- ``needle``: a "special magic number" sentence hidden in real prose at a chosen depth.
- ``kv``: InfiniteBench-style key-value retrieval: find one UUID key among many UUID pairs.
- ``multi_needle``: two or three magic numbers for the same key, spread through the prose;
  the answer must give all of them.
- ``two_hop``: two facts planted apart, "the X office is run by P" and "P's badge number
  is N"; the question names only X, so the second fact is found only through the first.

Document lengths are in tokens of the model's tokenizer.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import haystack, prose

TASKS: tuple[str, ...] = ("passkey", "needle", "kv", "multi_needle", "two_hop")

_FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
_CITIES = (
    "Chicago",
    "Lisbon",
    "Nairobi",
    "Osaka",
    "Toronto",
    "Helsinki",
    "Santiago",
    "Melbourne",
    "Vancouver",
    "Marseille",
    "Montevideo",
    "Reykjavik",
    "Hanoi",
    "Krakow",
    "Denver",
    "Auckland",
    "Seville",
    "Winnipeg",
    "Bergen",
    "Quito",
)

_PEOPLE = (
    "Ilse Varga",
    "Tomas Quell",
    "Mara Okafor",
    "Dov Lindqvist",
    "Anouk Brandt",
    "Rafe Moreau",
    "Suvi Kettunen",
    "Lior Abend",
    "Neve Castell",
    "Pim Haagen",
)


@dataclass(frozen=True)
class Sample:
    """One generated question over one document, with what a correct answer must contain."""

    task: str
    sample_id: str
    length: int
    """Target document length in tokens."""
    depth: float | None
    """Where the (first) fact sits, 0.0 start to 1.0 end."""
    document: str
    question: str
    expected: tuple[str, ...]
    """Every one of these must appear in the answer."""
    evidence: tuple[tuple[int, int], ...]
    """Char spans of the planted facts in ``document``."""
    max_new_tokens: int


def make_sample(
    tokenizer: Any, task: str, length: int, depth: float | None, seed: int, index: int = 0
) -> Sample:
    """Generate sample ``index`` of ``task`` at ``length`` tokens; same inputs, same sample."""
    if task not in _MAKERS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    sample_id = f"{task}-L{length}-d{'r' if depth is None else round(depth * 100)}-s{seed}-{index}"
    rng = random.Random(sample_id)
    if depth is None:
        depth = round(rng.random(), 3)
    return _MAKERS[task](tokenizer, length, depth, rng, sample_id)


def _passkey(
    tokenizer: Any, length: int, depth: float, rng: random.Random, sample_id: str
) -> Sample:
    key = str(rng.randrange(10_000, 100_000))
    fact = f"The pass key is {key}. Remember it. {key} is the pass key."
    repeats = 2 * length // max(1, haystack.count_tokens(tokenizer, _FILLER)) + 2
    planted = _planted(tokenizer, _FILLER * repeats, length, [(depth, fact)])
    return Sample(
        "passkey",
        sample_id,
        length,
        depth,
        planted.document,
        "What is the pass key?",
        (key,),
        planted.spans,
        32,
    )


@dataclass(frozen=True)
class _Facts:
    """What a prose task plants and asks, before its prose is chosen."""

    facts: list[tuple[float, str]]
    """``(depth, sentence)`` pairs to plant."""
    question: str
    expected: tuple[str, ...]
    max_new_tokens: int
    subject: str
    """The city the question is about (joint documents keep them distinct)."""


def _needle_facts(rng: random.Random, depth: float) -> _Facts:
    city, value = rng.choice(_CITIES), str(rng.randrange(1_000_000, 10_000_000))
    return _Facts(
        [(depth, f"The special magic number for {city} is {value}.")],
        f"What is the special magic number for {city}?",
        (value,),
        32,
        city,
    )


def _multi_needle_facts(rng: random.Random, depth: float) -> _Facts:
    city = rng.choice(_CITIES)
    count = rng.choice((2, 3))
    values = [str(v) for v in rng.sample(range(1_000_000, 10_000_000), count)]
    depths = [depth] + [round(rng.random(), 3) for _ in range(count - 1)]
    facts = [
        (d, f"One of the special magic numbers for {city} is {v}.")
        for d, v in zip(depths, values, strict=True)
    ]
    question = f"What are all the special magic numbers for {city}?"
    return _Facts(facts, question, tuple(values), 64, city)


def _two_hop_facts(rng: random.Random, depth: float) -> _Facts:
    city, person = rng.choice(_CITIES), rng.choice(_PEOPLE)
    value = str(rng.randrange(1_000_000, 10_000_000))
    second = round(rng.random(), 3)
    facts = [
        (depth, f"The {city} office is run by {person}."),
        (second, f"The badge number of {person} is {value}."),
    ]
    question = f"What is the badge number of the person who runs the {city} office?"
    return _Facts(facts, question, (value,), 32, city)


_PROSE_TASKS: dict[str, Callable[[random.Random, float], _Facts]] = {
    "needle": _needle_facts,
    "multi_needle": _multi_needle_facts,
    "two_hop": _two_hop_facts,
}
"""Tasks whose facts are planted in :mod:`~benchmarks.prose`."""


def _prose_task(task: str) -> Callable[[Any, int, float, random.Random, str], Sample]:
    def make(
        tokenizer: Any, length: int, depth: float, rng: random.Random, sample_id: str
    ) -> Sample:
        spec = _PROSE_TASKS[task](rng, depth)
        planted = _planted(tokenizer, _prose(rng, length), length, spec.facts)
        return Sample(
            task,
            sample_id,
            length,
            depth,
            planted.document,
            spec.question,
            spec.expected,
            planted.spans,
            spec.max_new_tokens,
        )

    return make


def make_joint_samples(
    tokenizer: Any, tasks: tuple[str, ...], length: int, seed: int
) -> list[Sample]:
    """One document of ``length`` tokens with the facts of every task in ``tasks`` planted,
    and one sample per task over it (each with its own question, answer and evidence).

    For runs where one read must serve several questions (a million tokens read once).
    ``tasks`` are prose tasks (:data:`_PROSE_TASKS`); each asks about its own city, so no
    question's facts answer another. Depths are random, drawn from the seed.
    """
    unknown = [t for t in tasks if t not in _PROSE_TASKS]
    if unknown or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be distinct, from {tuple(_PROSE_TASKS)}; got {tasks}")
    base = f"joint-{'+'.join(tasks)}-L{length}-s{seed}"
    rng = random.Random(base)
    specs: list[_Facts] = []
    for task in tasks:
        spec = _PROSE_TASKS[task](rng, round(rng.random(), 3))
        while spec.subject in {s.subject for s in specs}:
            spec = _PROSE_TASKS[task](rng, round(rng.random(), 3))
        specs.append(spec)
    facts = [fact for spec in specs for fact in spec.facts]
    planted = _planted(tokenizer, _prose(rng, length), length, facts)
    samples, first = [], 0
    for task, spec in zip(tasks, specs, strict=True):
        spans = planted.spans[first : first + len(spec.facts)]
        first += len(spec.facts)
        samples.append(
            Sample(
                task,
                f"{task}-{base}",
                length,
                spec.facts[0][0],
                planted.document,
                spec.question,
                spec.expected,
                spans,
                spec.max_new_tokens,
            )
        )
    return samples


def _kv(tokenizer: Any, length: int, depth: float, rng: random.Random, sample_id: str) -> Sample:
    def new_uuid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    probe = json.dumps({new_uuid(): new_uuid() for _ in range(8)})
    per_pair = max(1, haystack.count_tokens(tokenizer, probe) // 8)
    pairs = [(new_uuid(), new_uuid()) for _ in range(max(2, length // per_pair + 1))]
    while len(pairs) > 2:
        excess = haystack.count_tokens(tokenizer, json.dumps(dict(pairs))) - length
        if excess <= 0:
            break
        pairs = pairs[: -max(1, -(-excess // per_pair))]
    target = min(len(pairs) - 1, round(depth * (len(pairs) - 1)))
    key, value = pairs[target]
    document = json.dumps(dict(pairs))
    fact = json.dumps({key: value})[1:-1]
    start = document.index(fact)
    question = (
        f'Extract the value corresponding to the specified key in the JSON object. Key: "{key}"'
    )
    return Sample(
        "kv",
        sample_id,
        length,
        depth,
        document,
        question,
        (value,),
        ((start, start + len(fact)),),
        48,
    )


def _prose(rng: random.Random, length: int) -> str:
    return prose.prose_from(rng.randrange(len(prose.chapters())), min_chars=length * 8)


def _planted(
    tokenizer: Any, text: str, length: int, facts: list[tuple[float, str]]
) -> haystack.Planted:
    """``text`` cut so that it plus the ``facts`` is about ``length`` tokens, facts planted."""
    budget = length - sum(haystack.count_tokens(tokenizer, " " + f) for _, f in facts)
    if budget < 1:
        raise ValueError(f"length {length} is too short for the facts of this task")
    return haystack.plant(tokenizer, haystack.fit_tokens(tokenizer, text, budget), facts)


_MAKERS: dict[str, Callable[[Any, int, float, random.Random, str], Sample]] = {
    "passkey": _passkey,
    "needle": _prose_task("needle"),
    "kv": _kv,
    "multi_needle": _prose_task("multi_needle"),
    "two_hop": _prose_task("two_hop"),
}
