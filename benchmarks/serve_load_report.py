"""The BENCHMARKS.md section of ``python -m benchmarks serve-load`` (:mod:`.serve_load`)."""

from __future__ import annotations

from typing import Any

from tabulate import tabulate

from .paths import Paths, load_json
from .serve_load import IN_PROCESS, RESULTS


def serve_load_section(paths: Paths) -> str | None:
    """The BENCHMARKS.md section, or ``None`` before a run."""
    data = load_json(paths.results / RESULTS)
    if not data:
        return None
    meta, load = data["meta"], data["meta"]["load"]
    local = {
        level["concurrency"]: level
        for level in data["systems"].get(IN_PROCESS, {}).get("levels", [])
    }
    table = []
    for name, entry in data["systems"].items():
        for level in entry["levels"]:
            alone = local.get(level["concurrency"])
            ratio = (
                f"{level['requests_per_second'] / alone['requests_per_second']:.2f}x"
                if name != IN_PROCESS and alone and alone["requests_per_second"]
                else ""
            )
            table.append(
                [
                    name,
                    level["concurrency"],
                    f"{level['completed']}/{level['requests']}",
                    f"{level['requests_per_second']:.3f}",
                    ratio,
                    f"{level['p50_latency']} / {level['p95_latency']} / {level['p99_latency']}",
                    f"{level['p50_ttft']} / {level['p95_ttft']}",
                    level["rate_limited"],
                    level["errors"],
                    " / ".join(map(str, sorted(level["replicas"].values(), reverse=True))),
                    "yes" if level["exactly_once"] else "NO",
                    " → ".join(str(v) for v in level["load_average"]),
                ]
            )
    headers = [
        "system",
        "C",
        "complete",
        "req/s",
        "vs in-process",
        "latency p50 / p95 / p99 s",
        "TTFT p50 / p95 s",
        "429s",
        "errors",
        "answers per replica",
        "exactly once",
        "load avg",
    ]
    box = meta["machine"]
    reads = [
        f"`{name}` {', '.join(_read_text(d) for d in entry['documents'])}"
        for name, entry in data["systems"].items()
    ]
    problems = [
        f"- `{name}`, C = {level['concurrency']}: "
        + "; ".join(level["problems"] + level["error_samples"])
        for name, entry in data["systems"].items()
        for level in entry["levels"]
        if level["problems"] or level["error_samples"]
    ]
    return "\n".join(
        [
            "## Many clients on one server: `quickllama serve` under load",
            "",
            f"- Command: `{meta['command']}` ({meta.get('date', '')})",
            f"- Machine: {box['cpu']}, {box['cores']} cores, {box['ram_gib']} GiB RAM; device "
            f"`{box['device']}`; model {meta['model']}. The server, its clients and the "
            "in-process runs share the machine; `load avg` is its 1-minute load average at "
            "the level's start and end (other work on the machine included).",
            f"- Per level {load['requests']} streamed requests from C clients (the stock "
            "`openai` async client, no retries), each taking the next request when its last "
            f"one ends: {round(100 * load['new_share'])}% bring a new {load['length']}-token "
            "document in their messages (read for the question), the rest ask follow-ups "
            f"about {load['documents']} documents posted to `/v1/documents` once "
            "(`document_id`); every answer exactly "
            f"{load['max_new_tokens']} tokens. `in-process`: the same requests through "
            "`ChatQLLM.astream` over a local engine (follow-ups with `read_once`), C at once. "
            + _servers_text(meta),
            "- Documents read before the levels: " + "; ".join(reads) + ".",
            "- req/s counts complete answers over the level's wall time; latency and time to "
            "first token are of complete answers; `exactly once`: every request has a "
            "record and every accepted one exactly one complete answer (one `finish_reason` "
            "chunk, one usage chunk, all its tokens, one response id), no response id twice. "
            "`answers per replica`: complete answers by the process that sent them (the "
            "`x-quickllama-replica` header).",
            "",
            tabulate(table, headers=headers, tablefmt="github"),
            "",
            *(["What went wrong:", "", *problems, ""] if problems else []),
        ]
    )


def _servers_text(meta: dict[str, Any]) -> str:
    queue = meta.get("max_queue")
    limit = f"`--max-queue {queue}`" if queue else "the default `--max-queue`"
    text = f"`server`: one uvicorn process, {limit}"
    if meta["replicas"]:
        text += (
            f"; `ray x{meta['replicas']}`: Ray Serve, {meta['replicas']} replicas (Ray sets "
            "each replica's `OMP_NUM_THREADS` to its `num_cpus`, 1 by default: one torch "
            "thread per replica, where the server and the in-process engine run "
            f"{meta['machine']['torch_threads']})"
        )
    return text + "."


def _read_text(document: dict[str, Any]) -> str:
    if "post_seconds" in document:
        return f"{document['tokens']} tokens in {document['post_seconds']} s"
    return f"all in {document['read_seconds']} s"
