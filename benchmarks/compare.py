"""Engine configs compared on the same samples: paired results and the accuracy/speed frontier.

``python -m benchmarks compare --size standard --systems qllm qllm-reread rag full`` answers
every sample of the size's tasks and lengths (in rounds of one sample per task and length)
with each named system in turn, so that pairs accumulate evenly, appending one record per
(sample, system) to ``benchmarks/out/compare-<size>/records.jsonl``. A rerun skips the
pairs already there, so an interrupted run resumes. After every sample the summary
(``benchmarks/results/compare-<size>.json``) and BENCHMARKS.md are rewritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from . import haystack, machine, runner
from .paths import Paths, load_json, save_json
from .rag import EMBEDDING_NAME, RagSettings, RagSystem, minilm_embeddings
from .sizes import Size
from .systems import EngineSystem, System, engine_with
from .tasks import Sample, make_sample

_PAPER = {"reread_tokens": 0}
_MEAN_RANKED = {"reread_ranking": "mean", "reread_min_tokens": 0, "reread_score_ratio": 0.0}
"""The re-read as it ranked until issue 28 (the records of these systems were made so)."""
_PEAK_SIZED = {
    "reread_tokens": 3072,
    "reread_ranking": "peak",
    "reread_min_tokens": 768,
    "reread_score_ratio": 0.5,
}
_PUBLISHED = {"n_local": 1024, "block_size": 128, "topk": 8, "exec_block_size": 512}
VARIANTS: dict[str, dict[str, Any]] = {
    # the paper's method (single pass) at the engine's default budget, and its baselines
    "qllm": {"mode": "qllm", **_PAPER},
    "infllm": {"mode": "infllm", **_PAPER},
    "streaming": {"mode": "streaming", **_PAPER},
    "full": {"mode": "full"},
    # the paper's method at larger budgets
    "qllm-published": {"mode": "qllm", **_PAPER, **_PUBLISHED},
    "qllm-half-window": {
        "mode": "qllm",
        **_PAPER,
        **_PUBLISHED,
        "n_local": 2048,
        "topk": 16,
    },
    # beyond the paper: re-read the passages the question attended to, with full attention
    "qllm-reread": {"mode": "qllm", **_MEAN_RANKED, "reread_tokens": 3072},
    "qllm-reread-1k": {"mode": "qllm", **_MEAN_RANKED, "reread_tokens": 1024},
    "infllm-reread": {"mode": "infllm", **_MEAN_RANKED, "reread_tokens": 3072},
    # the re-read ranked by the peak share and sized by its scores (the default since
    # issue 28; benchmarks/passages.py answers it paired with the above from one read)
    "qllm-reread-peak": {"mode": "qllm", **_PEAK_SIZED},
    # read once, question-free (engine.read), then answer from the memory (issue 14)
    "memory-reread": {"mode": "qllm", **_MEAN_RANKED, "reread_tokens": 3072, "read_once": True},
    "memory": {"mode": "qllm", **_PAPER, "read_once": True},
}
"""Engine systems by name: config fields set on top of the engine's own config
(``read_once``: read the document into a memory first, see ``EngineSystem``)."""
SYSTEMS: tuple[str, ...] = (*VARIANTS, "rag")


def results_name(size: Size) -> str:
    """File name of a size's summary under ``benchmarks/results``."""
    return f"compare-{size.name}.json"


def compare_samples(tokenizer: Any, size: Size, seed: int) -> list[Sample]:
    """Every (task, length, index) of the size, in rounds: sample 0 of every task and
    length, then sample 1, ...; so a run stopped early is still balanced."""
    return [
        runner.capped(make_sample(tokenizer, task, length, None, seed, index), size)
        for index in range(size.task_samples)
        for length in size.task_lengths
        for task in size.tasks
    ]


def build_system(name: str, engine: Any, embeddings: Callable[[], Any]) -> System:
    """The named system over ``engine`` (``rag`` asks ``embeddings`` for its model)."""
    if name == "rag":
        return RagSystem(engine, embeddings(), RagSettings())
    if name not in VARIANTS:
        raise SystemExit(f"unknown system {name!r}; choose from {', '.join(SYSTEMS)}")
    changes = dict(VARIANTS[name])
    read_once = bool(changes.pop("read_once", False))
    return EngineSystem(
        engine_with(engine, **changes), changes["mode"], name=name, read_once=read_once
    )


def run_compare(
    engine: Any,
    size: Size,
    paths: Paths,
    systems: Sequence[str],
    *,
    seed: int = 0,
    embeddings: Any = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Answer the size's samples with each system in turn; resumes from earlier records."""
    from .report import write_report

    started = time.perf_counter()
    records_path = paths.out / f"compare-{size.name}" / "records.jsonl"
    records_path.parent.mkdir(parents=True, exist_ok=True)
    records = runner.read_records(records_path)
    done = {(r["system"], r["sample_id"]) for r in records}
    samples = compare_samples(engine.tokenizer, size, seed)
    doc_tokens = {s.sample_id: haystack.count_tokens(engine.tokenizer, s.document) for s in samples}
    meta = {
        "command": command or "benchmarks.compare.run_compare",
        "machine": machine.describe(str(engine.model.device)),
        "model": engine.model_name,
        "base_config": dataclasses.asdict(engine.config),
        "variants": _earlier_variants(paths.results / results_name(size), records)
        | {name: VARIANTS[name] for name in systems if name in VARIANTS},
        "size": dataclasses.asdict(size),
        "seed": seed,
        "rag": dataclasses.asdict(RagSettings()) | {"embedding": EMBEDDING_NAME},
    }

    loads: list[float] = []

    def save() -> dict[str, Any]:
        loads.append(round(os.getloadavg()[0], 2))
        summary = {
            "meta": meta
            | {
                "date": machine.now(),
                "wall_seconds": time.perf_counter() - started,
                "load_average": {"min": min(loads), "max": max(loads)},
            },
            "records": records,
        }
        save_json(paths.results / results_name(size), summary)
        write_report(paths)
        return summary

    summary = save()
    built = [
        build_system(name, engine, lambda: embeddings or minilm_embeddings()) for name in systems
    ]
    with records_path.open("a", encoding="utf-8") as out:
        for sample in tqdm(samples, desc=f"compare {size.name}", unit="sample"):
            for system in built:
                if (system.name, sample.sample_id) in done:
                    continue
                record = runner.answer_record(
                    system, sample, doc_tokens[sample.sample_id], size.full_max_tokens
                ) | {"experiment": "compare"}
                out.write(json.dumps(record) + "\n")
                out.flush()
                records.append(record)
            summary = save()
    return summary


def _earlier_variants(summary: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The variants an earlier invocation described, of the systems whose records remain."""
    if not summary.exists():
        return {}
    kept = {r["system"] for r in records}
    variants = load_json(summary)["meta"].get("variants", {})
    return {name: changes for name, changes in variants.items() if name in kept}


def paired_rows(
    records: list[dict[str, Any]], baseline: str, systems: Sequence[str]
) -> list[list[Any]]:
    """Per system, on the samples both it and ``baseline`` answered: wins, losses, ties."""
    by_key = {(r["system"], r["sample_id"]): r for r in records if r["status"] != "skipped"}
    rows = []
    for system in systems:
        if system == baseline:
            continue
        wins = losses = both = neither = 0
        for (name, sample_id), record in by_key.items():
            base = by_key.get((baseline, sample_id))
            if name != system or base is None:
                continue
            new, old = bool(record["correct"]), bool(base["correct"])
            wins += new and not old
            losses += old and not new
            both += new and old
            neither += not new and not old
        if wins + losses + both + neither:
            rows.append([system, wins, losses, both, neither, wins + losses + both + neither])
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


def load_records(path: Path) -> list[dict[str, Any]]:
    """Records of a saved summary (empty when there is none)."""
    if not path.exists():
        return []
    return list(json.loads(path.read_text(encoding="utf-8"))["records"])
