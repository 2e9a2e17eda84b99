"""The two benchmark commands as functions: the long-context suite and the throughput run."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict
from typing import Any

from qllm_core.spec import EngineSpec

from . import machine, report, runner, throughput
from .paths import Paths, load_json, save_json
from .prose import PROSE_NAME
from .rag import EMBEDDING_NAME, RagSettings, RagSystem, minilm_embeddings
from .sizes import Size
from .systems import ENGINE_MODES, EngineSystem, System, engine_with

THROUGHPUT_MODES: tuple[str, ...] = ("qllm", "full")
THROUGHPUT_LENGTHS: tuple[int, ...] = (4096, 16384, 32768, 65536)
_API_CALL = "benchmarks.commands (called from Python, not the command line)"


def run_suite(
    engine: Any,
    spec: EngineSpec,
    size: Size,
    paths: Paths,
    *,
    seed: int = 0,
    embeddings: Any = None,
    embedding_name: str = EMBEDDING_NAME,
    point_timeout: float = 3600.0,
    command: str | None = None,
) -> dict[str, Any]:
    """Accuracy of every system on every task, the question_weight sweep, speed points.

    Writes per-sample JSONL under ``paths.out``, the summary to ``paths.results``, the
    figures, and BENCHMARKS.md. ``spec`` must describe ``engine`` (speed points reload it
    in fresh processes).
    """
    started = time.perf_counter()
    records_path = paths.out / f"run-{size.name}" / "records.jsonl"
    records_path.unlink(missing_ok=True)
    tokenizer = engine.tokenizer
    rag_settings = RagSettings()
    systems: list[System] = [EngineSystem(engine, mode) for mode in ENGINE_MODES]
    systems.append(RagSystem(engine, embeddings or minilm_embeddings(), rag_settings))
    main_count = (
        len(size.needle_lengths) * len(size.needle_depths)
        + len(size.tasks) * len(size.task_lengths) * size.task_samples
    )
    records = runner.run(
        systems,
        runner.main_samples(tokenizer, size, seed),
        records_path,
        tokenizer=tokenizer,
        experiment="main",
        total=main_count,
        full_max_tokens=size.full_max_tokens,
    )
    sweepers, labels = [], {}
    for weight in size.sweep_weights:
        name = f"qllm w={weight:g}"
        variant = engine_with(engine, mode="qllm", question_weight=weight)
        sweepers.append(EngineSystem(variant, "qllm", name=name))
        labels[name] = {"question_weight": weight}
    records += runner.run(
        sweepers,
        runner.sweep_samples(tokenizer, size, seed),
        records_path,
        tokenizer=tokenizer,
        experiment="sweep",
        labels=labels,
        total=2 * len(size.sweep_lengths) * size.sweep_samples,
    )
    points = []
    if size.speed_lengths:
        print(f"speed/memory points ({len(size.speed_lengths) * len(ENGINE_MODES)} processes)")
        points = throughput.sweep(spec, ENGINE_MODES, size.speed_lengths, timeout=point_timeout)
    meta = _meta(engine, started, command) | {
        "size": asdict(size),
        "seed": seed,
        "prose": PROSE_NAME,
        "rag": asdict(rag_settings) | {"embedding": embedding_name},
    }
    summary = {"meta": meta, "records": records, "speed_points": [asdict(p) for p in points]}
    save_json(paths.results / report.RUN_RESULTS, summary)
    report.write_report(paths)
    return summary


def run_throughput(
    spec: EngineSpec,
    paths: Paths,
    *,
    modes: tuple[str, ...] = THROUGHPUT_MODES,
    lengths: tuple[int, ...] = THROUGHPUT_LENGTHS,
    timeout: float = 3600.0,
    memory_fraction: float = 0.75,
    command: str | None = None,
) -> dict[str, Any]:
    """Prefill tokens/s and peak memory of ``modes`` at ``lengths``, side by side in one run."""
    started = time.perf_counter()
    points = throughput.sweep(
        spec, modes, lengths, timeout=timeout, memory_fraction=memory_fraction
    )
    engine_facts = _engine_facts(spec, points)
    meta = {
        "command": command or _API_CALL,
        "date": machine.now(),
        "machine": machine.describe(spec.device),
        "wall_seconds": round(time.perf_counter() - started, 1),
    } | engine_facts
    summary = {"meta": meta, "points": [asdict(p) for p in points]}
    save_json(paths.out / "throughput" / "points.json", summary)
    save_json(paths.results / report.THROUGHPUT_RESULTS, summary)
    report.add_to_history(paths, summary)
    report.write_report(paths)
    return summary


def rerender(paths: Paths) -> str:
    """Re-render BENCHMARKS.md from the saved results."""
    if (
        load_json(paths.results / report.RUN_RESULTS) is None
        and load_json(paths.results / report.THROUGHPUT_RESULTS) is None
    ):
        print(f"no results under {paths.results}")
    return report.write_report(paths)


def _meta(engine: Any, started: float, command: str | None) -> dict[str, Any]:
    return {
        "command": command or _API_CALL,
        "date": machine.now(),
        "machine": machine.describe(str(engine.model.device)),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "model": engine.model_name,
        "config": _config_dict(engine.config),
    }


def _engine_facts(spec: EngineSpec, points: list[throughput.Point]) -> dict[str, Any]:
    """Model name and config as the measuring processes reported them (or as the API says)."""
    for point in points:
        if point.engine:
            return dict(point.engine)
    config = spec.resolved_config()
    name = "SmolLM2-135M-Instruct (embedded)" if spec.source is None else spec.source
    return {"model": name, "config": _config_dict(config)}


def _config_dict(config: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return dict(vars(config))
