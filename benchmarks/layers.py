"""Per-layer block scores for ranking studies: what each layer's question attention finds.

``python -m benchmarks layers --task-set realdocs`` reads each sample as the default does
(:func:`benchmarks.passages.read_prompt`) and keeps, per layer, the final question's log
attention mass per memory block
(:meth:`qllm_core.memory.request.LayerMemory.block_log_mass`, (H, G, n, B) in float16:
blocks whose scores tie within its rounding may swap places against the read's own float32
ranking), with the question's token ids and each fact's token span, in
``benchmarks/out/layers-<set>/<sample_id>.pt``. Any ranking that is a function of these (per
layer, head and question token) can then be scored offline against the answer's block
(:func:`benchmarks.passages.block_ranks`) on the same reads
(:mod:`benchmarks.ranking_study`). Resumable: a sample whose file exists is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .passages import fact_spans, read_prompt, sample_prompt
from .paths import Paths
from .tasks import Sample


def dump_layers(engine: Any, samples: Iterable[Sample], paths: Paths, set_name: str) -> Path:
    """Read each sample once and save its per-layer block log mass; returns the folder."""
    folder = paths.out / f"layers-{set_name}"
    folder.mkdir(parents=True, exist_ok=True)
    for sample in tqdm(list(samples), desc=f"layers {set_name}", unit="sample"):
        target = folder / f"{sample.sample_id}.pt"
        if target.exists():
            continue
        layout = sample_prompt(engine, sample)
        started = time.perf_counter()
        with torch.inference_mode():
            step, _ = read_prompt(engine, layout)
            memory = step.memory
            log_mass = [memory.layers[i].block_log_mass() for i in sorted(memory.layers)]
        lo, hi = layout.final_question_span
        record = {
            "sample_id": sample.sample_id,
            "task": sample.task,
            "length": sample.length,
            "read_seconds": time.perf_counter() - started,
            "log_mass": [m.half().cpu() if m is not None else None for m in log_mass],
            "rank_ids": list(layout.input_ids[lo:hi]),
            "fact_spans": fact_spans(layout, sample),
            "document_span": tuple(layout.document_span),
            "n_init": engine.config.n_init,
            "block_size": engine.config.block_size,
        }
        partial = target.with_suffix(".part")
        torch.save(record, partial)
        partial.replace(target)
    return folder
