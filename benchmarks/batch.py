"""Many questions at once: batched decoding against one request at a time, on the same requests.

``python -m benchmarks batch --lengths 8192 --concurrency 1 2 4 8`` builds, per length,
``max(concurrency)`` needle samples (seed 0, the ``standard`` generator) and runs two
workloads:

- ``memory``: the first sample's document read once (``engine.read``), then every
  sample's question asked of that memory (the question, the re-read and the answer are
  the whole cost, as for a team asking many questions about the same files);
- ``new``: each request with its own document, read for its question.

For each concurrency C, the first C requests run twice on one engine (``max_batch_size``
the largest C): **sequential** (one after another, each decoded alone) and **batched**
(the C requests in C threads at once; their decode steps share forward passes,
:mod:`qllm_core.answering.scheduler`). Both decode through the scheduler, so batching is
the only difference. The C = 1 rows add the engine decoding alone without the scheduler
(``max_batch_size=1``: a static KV cache and the model's own attention) as ``unbatched``.
Every answer is exactly ``max_new_tokens`` long (``min_new_tokens`` holds off the end of
sequence). Recorded: wall time, aggregate decode tokens/s (tokens generated over the wall
time), requests per minute, p50/p95 latency, p50 time to first token, the process's peak
RSS after the run (monotonic, so only its growth says anything), and whether every
batched answer equals the sequential one. Results: ``benchmarks/results/batch.json``, rendered into
BENCHMARKS.md.
"""

from __future__ import annotations

import resource
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from tabulate import tabulate

from . import machine
from .followup import timed_answer
from .paths import Paths, load_json, save_json
from .systems import engine_with
from .tasks import make_sample

RESULTS = "batch.json"
WORKLOADS = ("memory", "new")


def _sequential(engine: Any, requests: Sequence[tuple[Any, str]], tokens: int) -> list[dict]:
    """The requests one after another, in one worker thread as the batched ones run in
    theirs (on a loaded CPU, torch read this model's prompts twice as fast in a thread as
    in the main thread)."""
    out: list[dict[str, Any]] = []
    _in_threads([lambda: out.extend(timed_answer(engine, *r, tokens) for r in requests)])
    return out


def _concurrent(engine: Any, requests: Sequence[tuple[Any, str]], tokens: int) -> list[dict]:
    """The requests at once, each in a thread of its own."""
    out: list[dict[str, Any]] = [{} for _ in requests]

    def run(i: int) -> Callable[[], None]:
        return lambda: out.__setitem__(i, timed_answer(engine, *requests[i], tokens))

    _in_threads([run(i) for i in range(len(requests))])
    return out


def _in_threads(jobs: Sequence[Callable[[], None]]) -> None:
    """Run each job in a thread of its own; the first error of any is raised here."""
    errors: list[BaseException] = []

    def guarded(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as error:  # noqa: BLE001 - raised in the caller below
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _summary(results: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    latencies = sorted(r["total_seconds"] for r in results)
    generated = sum(r["tokens_generated"] for r in results)
    return {
        "wall_seconds": round(wall, 2),
        "tokens_per_second": round(generated / wall, 2),
        "requests_per_minute": round(60 * len(results) / wall, 2),
        "p50_latency": round(statistics.median(latencies), 2),
        "p95_latency": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 2),
        "p50_ttft": round(statistics.median(r["ttft_seconds"] for r in results), 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def run_batch(
    engine: Any,
    paths: Paths,
    lengths: Sequence[int],
    concurrency: Sequence[int],
    *,
    max_new_tokens: int = 64,
    command: str,
) -> dict[str, Any]:
    """Run both workloads at every length and concurrency; save as they finish."""
    unbatched = engine_with(engine, max_batch_size=1)
    batched = engine_with(engine, max_batch_size=max(concurrency))
    rows: list[dict[str, Any]] = []
    data: dict[str, Any] = {
        "meta": {
            "command": command,
            "machine": machine.describe(str(engine.model.device)),
            "model": engine.model_name,
            "max_new_tokens": max_new_tokens,
        },
        "rows": rows,
    }
    for length in lengths:
        samples = [
            make_sample(engine.tokenizer, "needle", length, None, 0, i)
            for i in range(max(concurrency))
        ]
        memory = engine.read(samples[0].document)
        workloads = {
            "memory": [(memory, s.question) for s in samples],
            "new": [(s.document, s.question) for s in samples],
        }
        for workload, requests in workloads.items():
            for c in concurrency:
                chosen = requests[:c]
                extra = {}
                if c == 1:
                    started = time.perf_counter()
                    plain = _sequential(unbatched, chosen, max_new_tokens)
                    extra["unbatched"] = _summary(plain, time.perf_counter() - started)
                    extra["unbatched_identical"] = plain[0]["text"]
                started = time.perf_counter()
                alone = _sequential(batched, chosen, max_new_tokens)
                seq_wall = time.perf_counter() - started
                started = time.perf_counter()
                together = _concurrent(batched, chosen, max_new_tokens)
                batch_wall = time.perf_counter() - started
                rows.append(
                    {
                        "length": length,
                        "workload": workload,
                        "concurrency": c,
                        "sequential": _summary(alone, seq_wall),
                        "batched": _summary(together, batch_wall),
                        "identical": [a["text"] for a in alone] == [b["text"] for b in together],
                        "largest_batch": batched.scheduler.largest_batch,
                    }
                    | extra
                )
                if c == 1:
                    rows[-1]["unbatched_identical"] = (
                        extra["unbatched_identical"] == alone[0]["text"]
                    )
                batched.scheduler.largest_batch = 0
                data["meta"]["date"] = machine.now()
                save_json(paths.results / RESULTS, data)
    return data


def decode_rates(
    engine: Any, concurrency: Sequence[int], *, length: int = 2048, tokens: int = 64
) -> list[dict[str, Any]]:
    """Aggregate decode tokens/s of C questions at once on one document memory, per C.

    The GPU check's batched-decode step (``make gpu-check``): the re-read is off, so the
    decode steps are the cost measured.
    """
    batched = engine_with(
        engine, max_batch_size=max(concurrency), reread_tokens=0, reread_min_tokens=0
    )
    sample = make_sample(engine.tokenizer, "needle", length, None, 0, 0)
    memory = batched.read(sample.document)
    out = []
    for c in concurrency:
        started = time.perf_counter()
        results = _concurrent(batched, [(memory, sample.question)] * c, tokens)
        wall = time.perf_counter() - started
        out.append({"concurrency": c} | _summary(results, wall))
    return out


def batch_section(paths: Paths) -> str | None:
    """The BENCHMARKS.md section, or ``None`` before a run."""
    data = load_json(paths.results / RESULTS)
    if not data:
        return None
    meta = data["meta"]
    table = []
    for row in data["rows"]:
        seq, bat = row["sequential"], row["batched"]
        table.append(
            [
                row["length"],
                row["workload"],
                row["concurrency"],
                f"{seq['tokens_per_second']:.1f} / {bat['tokens_per_second']:.1f}",
                f"{bat['tokens_per_second'] / seq['tokens_per_second']:.2f}x",
                f"{seq['requests_per_minute']:.1f} / {bat['requests_per_minute']:.1f}",
                f"{seq['p50_latency']:.1f} / {bat['p50_latency']:.1f}",
                f"{seq['p95_latency']:.1f} / {bat['p95_latency']:.1f}",
                f"{seq['p50_ttft']:.1f} / {bat['p50_ttft']:.1f}",
                bat["peak_rss_mib"],
                row["largest_batch"],
                "yes" if row["identical"] else "NO",
            ]
        )
    headers = [
        "tokens",
        "workload",
        "C",
        "decode tok/s seq / batch",
        "ratio",
        "req/min seq / batch",
        "p50 s",
        "p95 s",
        "TTFT p50 s",
        "peak RSS MiB",
        "largest batch",
        "same answers",
    ]
    unbatched = [
        f"- {row['length']} tokens, `{row['workload']}`: "
        f"{row['unbatched']['tokens_per_second']:.1f} tok/s, p50 "
        f"{row['unbatched']['p50_latency']:.1f} s without the scheduler against "
        f"{row['sequential']['tokens_per_second']:.1f} tok/s, "
        f"{row['sequential']['p50_latency']:.1f} s through it; the same answer: "
        + ("yes" if row["unbatched_identical"] else "NO")
        for row in data["rows"]
        if "unbatched" in row
    ]
    machine_line = meta["machine"]
    return "\n".join(
        [
            "## Many questions at once: batched decoding vs one at a time",
            "",
            f"- Command: `{meta['command']}` ({meta.get('date', '')})",
            f"- Machine: {machine_line['cpu']}, {machine_line['cores']} cores, "
            f"{machine_line['ram_gib']} GiB RAM; model {meta['model']}",
            f"- Each answer exactly {meta['max_new_tokens']} tokens; the same C requests run "
            "on one engine one after another and at once in C threads (decode steps "
            "batched); `memory`: questions on one document read once; `new`: a document "
            "per request. Pairs are sequential / batched.",
            "",
            tabulate(table, headers=headers, tablefmt="github"),
            "",
            "One request alone, decoded without the scheduler (`max_batch_size=1`: transformers' "
            "static cache and the model's own attention) and through it:",
            "",
            *unbatched,
            "",
        ]
    )
