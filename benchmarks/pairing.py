"""Systems set side by side on the same samples: who was right where, and how fast.

Records (one per system and sample, as the ``compare`` and ``passages`` commands write them)
come in; the rows and points the report's tables and figures show go out. Both report
sections pair through here, so the data flows one way: records, pairing, tables, report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Outcomes = Mapping[str, Mapping[str, bool]]
"""Per system, per sample id: whether its answer was right."""


def outcomes(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, bool]]:
    """Per system, per sample: right or not; skipped records (not run) are left out."""
    out: dict[str, dict[str, bool]] = {}
    for record in records:
        if record["status"] != "skipped":
            out.setdefault(record["system"], {})[record["sample_id"]] = bool(record["correct"])
    return out


@dataclasses.dataclass(frozen=True)
class Pairing:
    """One system against a baseline on the samples both answered."""

    wins: int
    """This system right, the baseline wrong."""
    lost: tuple[str, ...]
    """The samples this system got wrong and the baseline right."""
    both: int
    neither: int

    @property
    def losses(self) -> int:
        return len(self.lost)

    @property
    def samples(self) -> int:
        return self.wins + self.losses + self.both + self.neither


def pair(mine: Mapping[str, bool], base: Mapping[str, bool]) -> Pairing:
    """``mine`` against ``base``, sample by sample, on the samples both hold."""
    shared = [sample for sample in mine if sample in base]
    return Pairing(
        wins=sum(mine[s] and not base[s] for s in shared),
        lost=tuple(s for s in shared if base[s] and not mine[s]),
        both=sum(mine[s] and base[s] for s in shared),
        neither=sum(not mine[s] and not base[s] for s in shared),
    )


def paired_rows(correct: Outcomes, baseline: str, systems: Sequence[str]) -> list[list[Any]]:
    """Per system but ``baseline`` that shares a sample with it:
    ``[system, wins, losses, both right, both wrong, samples]``."""
    base = correct.get(baseline, {})
    rows = []
    for system in systems:
        if system == baseline:
            continue
        p = pair(correct.get(system, {}), base)
        if p.samples:
            rows.append([system, p.wins, p.losses, p.both, p.neither, p.samples])
    return rows


def _rates(records: list[dict[str, Any]]) -> tuple[float, float]:
    """Prefill and decode tokens/s over ``records`` (total tokens over total seconds)."""
    prefill = sum(r["tokens_read"] for r in records) / sum(r["prefill_seconds"] for r in records)
    generated = sum(r["tokens_generated"] for r in records)
    return prefill, generated / max(1e-9, sum(r["decode_seconds"] for r in records))


def speed_rows(records: list[dict[str, Any]], systems: Sequence[str]) -> list[list[Any]]:
    """Per system and length: mean prefill and decode tokens/s over the samples run."""
    rows = []
    lengths = sorted({r["length"] for r in records})
    for system in systems:
        for length in lengths:
            mine = [
                r
                for r in records
                if r["system"] == system and r["length"] == length and r["status"] == "ok"
            ]
            if not mine:
                continue
            prefill, decode = _rates(mine)
            rows.append([system, length, len(mine), round(prefill), round(decode, 1)])
    return rows


@dataclasses.dataclass(frozen=True)
class FrontierPoint:
    """One system's accuracy (share right) and tokens/s on the frontier's samples."""

    system: str
    accuracy: float
    prefill: float
    decode: float


@dataclasses.dataclass(frozen=True)
class Frontier:
    """Points on the same samples: the longest two ``lengths`` (beyond the model's window),
    ``samples`` of them run by every system; speeds at ``longest``. ``full``: its accuracy
    and sample count over the lengths it ran (in window only), or ``None``."""

    points: list[FrontierPoint]
    lengths: list[int]
    longest: int
    samples: int
    full: tuple[float, int] | None


def frontier_points(records: list[dict[str, Any]]) -> Frontier:
    """Each system's accuracy over the samples of the longest two lengths that every system
    (but ``full``) ran, and its prefill and decode tokens/s at the longest length on those.

    Restricting to the common samples keeps the points paired when a system ran only part
    of the samples (an interrupted or later run).
    """
    ok = [r for r in records if r["status"] == "ok"]
    lengths = sorted({r["length"] for r in records})[-2:]
    longest = lengths[-1] if lengths else 0
    ran: dict[str, set[str]] = {}
    for r in ok:
        if r["system"] != "full" and r["length"] in lengths:
            ran.setdefault(r["system"], set()).add(r["sample_id"])
    common = set.intersection(*ran.values()) if ran else set()
    points = []
    for system in ran:
        scored = [r for r in ok if r["system"] == system and r["sample_id"] in common]
        at_longest = [r for r in scored if r["length"] == longest]
        if not scored or not at_longest:
            continue
        accuracy = sum(bool(r["correct"]) for r in scored) / len(scored)
        points.append(FrontierPoint(system, accuracy, *_rates(at_longest)))
    full = [r for r in ok if r["system"] == "full"]
    full_accuracy = (sum(bool(r["correct"]) for r in full) / len(full), len(full)) if full else None
    return Frontier(points, lengths, longest, len(common), full_accuracy)
