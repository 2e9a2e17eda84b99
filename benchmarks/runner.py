"""Run systems over generated samples and keep one JSON record per (sample, system)."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import haystack
from .scoring import score
from .sizes import Size
from .systems import System
from .tasks import Sample, make_sample

logger = logging.getLogger(__name__)


def main_samples(tokenizer: Any, size: Size, seed: int) -> Iterator[Sample]:
    """The needle grid, then passkey, kv and multi_needle at random depths."""
    for length in size.needle_lengths:
        for depth in size.needle_depths:
            yield capped(make_sample(tokenizer, "needle", length, depth, seed), size)
    for task in size.tasks:
        for length in size.task_lengths:
            for index in range(size.task_samples):
                yield capped(make_sample(tokenizer, task, length, None, seed, index), size)


def sweep_samples(tokenizer: Any, size: Size, seed: int) -> Iterator[Sample]:
    """Needle and kv samples of the question_weight sweep."""
    for task in ("needle", "kv"):
        for length in size.sweep_lengths:
            for index in range(size.sweep_samples):
                sample = make_sample(tokenizer, task, length, None, seed + 1, index)
                yield capped(sample, size)


def capped(sample: Sample, size: Size) -> Sample:
    """``sample`` with its answer length capped by the size (plumbing sizes only)."""
    if size.max_new_tokens is None:
        return sample
    return dataclasses.replace(
        sample, max_new_tokens=min(sample.max_new_tokens, size.max_new_tokens)
    )


def run(
    systems: Sequence[System],
    samples: Iterable[Sample],
    records_path: Path,
    *,
    tokenizer: Any,
    experiment: str,
    full_max_tokens: int | None = None,
    labels: dict[str, dict[str, Any]] | None = None,
    total: int | None = None,
) -> list[dict[str, Any]]:
    """Answer every sample with every system (interleaved), appending records as they come.

    ``full`` mode is skipped (recorded as ``skipped``) on documents over ``full_max_tokens``.
    ``labels`` adds fields to each system's records (e.g. its question_weight).
    """
    records: list[dict[str, Any]] = []
    records_path.parent.mkdir(parents=True, exist_ok=True)
    with records_path.open("a", encoding="utf-8") as out:
        for sample in tqdm(samples, total=total, desc=experiment, unit="sample"):
            doc_tokens = haystack.count_tokens(tokenizer, sample.document)
            for system in systems:
                record = answer_record(system, sample, doc_tokens, full_max_tokens)
                record.update({"experiment": experiment, **(labels or {}).get(system.name, {})})
                out.write(json.dumps(record) + "\n")
                out.flush()
                records.append(record)
    return records


def answer_record(
    system: System, sample: Sample, doc_tokens: int, full_max_tokens: int | None
) -> dict[str, Any]:
    """One record: ``system``'s answer to ``sample``, scored, or why it was not run."""
    record: dict[str, Any] = {
        "system": system.name,
        "task": sample.task,
        "sample_id": sample.sample_id,
        "length": sample.length,
        "doc_tokens": doc_tokens,
        "depth": sample.depth,
        "expected": list(sample.expected),
    }
    if (
        getattr(system, "mode", None) == "full"
        and full_max_tokens is not None
        and doc_tokens > full_max_tokens
    ):
        return record | {
            "status": "skipped",
            "correct": None,
            "error": f"full mode not run over {full_max_tokens} tokens",
        }
    try:
        answer = system.answer(sample)
    except Exception as error:  # noqa: BLE001 - a failing system is a result, not a crash
        logger.warning("%s failed on %s: %s", system.name, sample.sample_id, error)
        return record | {
            "status": "error",
            "correct": False,
            "error": f"{type(error).__name__}: {error}"[:300],
        }
    fields = asdict(answer)
    fields["answer"] = fields.pop("text")
    tok_s = answer.tokens_read / answer.prefill_seconds if answer.prefill_seconds > 0 else None
    return (
        record
        | fields
        | {
            "status": "ok",
            "correct": score(sample.expected, answer.text),
            "prefill_tokens_per_second": tok_s,
        }
    )


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file (empty when it does not exist)."""
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]
