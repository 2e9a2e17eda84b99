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
from .report import write_report
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
