"""Many clients on one server: ``quickllama serve`` under load, against the in-process provider.

``python -m benchmarks serve-load --concurrency 1 4 16`` starts a real server process
(``quickllama serve`` on uvicorn, a free port, a scratch ``--memory-dir``; with ``--ray``
then Ray Serve with ``--replicas`` replicas), posts ``--documents`` generated documents to
``/v1/documents`` (each read once, before the load), and then, per concurrency C, runs C
clients (:mod:`.serve_clients`: the stock ``openai`` async client, no retries) that take
the level's ``--requests`` requests one after another from a shared list. A share
(``--new-share``) brings a new document of its own whole in the messages (the server reads
it for the question, as the providers route a chat); the rest are follow-up questions about
the posted documents (``document_id``: answered from their memory). Every answer streams
and is exactly ``--max-new-tokens`` long (``min_new_tokens`` holds off the end of sequence).

The same requests then run in this process through the LangChain provider (``ChatQLLM``
over a local engine, ``astream``, C at once; the follow-ups with ``read_once`` over the same
documents, read into the engine's memory cache first), so each level has a ratio of server
to in-process.

Per system and C: requests/s (complete answers over the level's wall time), p50/p95/p99
latency and p50/p95 time to first token of the complete answers, 429s, errors, the 1-minute
load average at the level's start and end, and the exactly-once check
(:func:`.serve_clients.exactly_once_problems`). Documents are the ``needle`` generator's
(:mod:`benchmarks.tasks`), seed-fixed; a new document is never asked about twice. Results:
``benchmarks/results/serve_load.json`` (saved after every level, with each request's
response id; each request's record in ``benchmarks/out/serve_load/records.jsonl``),
rendered into BENCHMARKS.md (:mod:`.serve_load_report`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qllm_core.spec import EngineSpec

from . import machine
from .followup import FOLLOW_UP
from .paths import Paths, save_json
from .serve_clients import (
    FOLLOW,
    NEW,
    REQUEST_SECONDS,
    Job,
    ProviderClient,
    ServerClient,
    level_summary,
    run_level,
)
from .tasks import make_sample

RESULTS = "serve_load.json"
IN_PROCESS = "in-process"
START_SECONDS = 600.0
"""Longest wait for a server's ``/health`` (loading the model; Ray starts its cluster)."""
STOP_SECONDS = 60.0
"""Longest wait for a server to exit after SIGTERM before its process group is killed."""


@dataclass(frozen=True)
class Load:
    """What the clients send (the same at every level and for every system)."""

    concurrency: tuple[int, ...] = (1, 4, 16)
    requests: int = 16
    """Requests per concurrency level."""
    length: int = 2048
    """Document length in tokens."""
    documents: int = 2
    """Documents posted to ``/v1/documents``, which the follow-ups ask about."""
    new_share: float = 0.25
    """Share of each level's requests that bring a new document of their own."""
    max_new_tokens: int = 32
    seed: int = 0


def posted_documents(tokenizer: Any, load: Load) -> list[Any]:
    """The samples whose documents are posted once (indices 0 .. documents-1)."""
    return [
        make_sample(tokenizer, "needle", load.length, None, load.seed, i)
        for i in range(load.documents)
    ]


def level_jobs(tokenizer: Any, load: Load, posted: Sequence[Any], level: int) -> list[Job]:
    """The requests of the ``level``-th concurrency level, new ones at seed-fixed places."""
    count = load.requests
    rng = random.Random(f"serve-load-{load.seed}-{level}")
    new = set(rng.sample(range(count), round(count * load.new_share)))
    jobs = []
    for i in range(count):
        if i in new:
            index = load.documents + level * count + i  # never posted, never asked twice
            sample = make_sample(tokenizer, "needle", load.length, None, load.seed, index)
            jobs.append(Job(i, NEW, sample.document, sample.question))
        else:
            which = i % len(posted)  # each document, in turn: its own question, then FOLLOW_UP
            question = posted[which].question if (i // len(posted)) % 2 == 0 else FOLLOW_UP
            jobs.append(Job(i, FOLLOW, posted[which].document, question, which))
    return jobs


# --- the server process ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(
    spec: EngineSpec,
    port: int,
    memory_dir: Path,
    *,
    replicas: int = 0,
    max_queue: int | None = None,
) -> list[str]:
    """``quickllama serve`` with the engine of ``spec`` (``replicas > 0``: on Ray Serve;
    ``max_queue``: its ``--max-queue``, else the server's default)."""
    script = Path(sys.executable).with_name("quickllama")
    if spec.overrides or spec.config is not None:
        raise SystemExit(
            "serve-load starts `quickllama serve`, which takes --model, --preset and --device, "
            "not --set: give the engine's settings as a preset"
        )
    command = [str(script), "serve", "--port", str(port), "--memory-dir", str(memory_dir)]
    for flag, value in (
        ("--model", spec.source),
        ("--preset", spec.preset),
        ("--device", spec.device),
        ("--dtype", spec.dtype),
        ("--max-queue", None if max_queue is None else str(max_queue)),
        ("--replicas", str(replicas) if replicas else None),
    ):
        if value is not None:
            command += [flag, value]
    return command


@contextlib.contextmanager
def served(
    spec: EngineSpec, log_path: Path, *, replicas: int = 0, max_queue: int | None = None
) -> Iterator[tuple[str, str]]:
    """A running :func:`server_command`: yields ``(base_url, model)``; stops it on exit.

    SIGTERM (the server drains and exits), then SIGKILL of its whole process group if it
    has not exited within :data:`STOP_SECONDS`. Its output goes to ``log_path``.
    """
    import httpx

    scratch = Path(tempfile.mkdtemp(prefix="qllm-serve-load-"))
    port = _free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            server_command(
                spec, port, scratch / "memories", replicas=replicas, max_queue=max_queue
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
                raise RuntimeError(f"`quickllama serve` did not become ready:\n{tail}")
            with contextlib.suppress(httpx.TransportError):
                reply = httpx.get(f"{base_url}/health", timeout=5)
                if reply.status_code == 200:
                    break
            time.sleep(0.5)
        yield base_url, str(reply.json()["model"])
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(scratch, ignore_errors=True)


async def post_documents(base_url: str, documents: Sequence[str]) -> list[dict[str, Any]]:
    """Post each document to ``/v1/documents`` (one at a time); their records, timed."""
    import httpx

    records = []
    async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_SECONDS) as client:
        for text in documents:
            started = time.perf_counter()
            reply = await client.post("/v1/documents", json={"text": text})
            reply.raise_for_status()
            records.append(reply.json() | {"post_seconds": round(time.perf_counter() - started, 2)})
    return records


# --- the run ----------------------------------------------------------------------------


LevelSink = Callable[[dict[str, Any], Sequence[dict[str, Any] | None]], None]
"""Receives each level's summary and records."""


class _Results:
    """The results file (rewritten after every level) and the records file (appended)."""

    def __init__(self, paths: Paths, data: dict[str, Any]):
        self.paths, self.data = paths, data
        self.records = paths.out / "serve_load" / "records.jsonl"
        self.records.parent.mkdir(parents=True, exist_ok=True)
        self.records.unlink(missing_ok=True)

    def system(self, name: str, documents: list[dict[str, Any]]) -> LevelSink:
        """Start ``name``'s entry; the sink that saves each of its levels."""
        entry: dict[str, Any] = {"documents": documents, "levels": []}
        self.data["systems"][name] = entry

        def sink(summary: dict[str, Any], records: Sequence[dict[str, Any] | None]) -> None:
            entry["levels"].append(summary)
            self.data["meta"]["date"] = machine.now()
            save_json(self.paths.results / RESULTS, self.data)
            with open(self.records, "a", encoding="utf-8") as out:
                for index, record in enumerate(records):
                    line = record or {"job": index, "lost": True}
                    where = {"system": name, "concurrency": summary["concurrency"]}
                    out.write(json.dumps(where | line) + "\n")
            print(f"{name}: {_progress_line(summary)}", flush=True)

        return sink


def run_serve_load(
    spec: EngineSpec,
    paths: Paths,
    load: Load = Load(),
    *,
    replicas: int = 0,
    max_queue: int | None = None,
    command: str,
) -> dict[str, Any]:
    """Every level on the server (and on Ray Serve with ``replicas > 0``), then in-process.

    ``max_queue``: the servers' ``--max-queue`` (``None``: their default).

    Saves ``paths.results / RESULTS`` after every level; returns what it saved.
    """
    engine = spec.load(progress=False)
    posted = posted_documents(engine.tokenizer, load)
    jobs = [level_jobs(engine.tokenizer, load, posted, i) for i in range(len(load.concurrency))]
    data: dict[str, Any] = {
        "meta": {
            "command": command,
            "machine": machine.describe(str(engine.model.device)),
            "model": engine.model_name,
            "load": asdict(load),
            "replicas": replicas,
            "max_queue": max_queue,
        },
        "systems": {},
    }
    results = _Results(paths, data)
    servers = [("server", 0)] + ([(f"ray x{replicas}", replicas)] if replicas else [])
    for name, count in servers:
        log = paths.out / "serve_load" / f"{name.replace(' ', '-')}.log"
        with served(spec, log, replicas=count, max_queue=max_queue) as (base_url, model):
            asyncio.run(_on_server(base_url, model, posted, jobs, load, results, name))
    started = time.perf_counter()
    for sample in posted:
        engine.memory_for(sample.document)
    read = [{"read_seconds": round(time.perf_counter() - started, 2)}]
    sink = results.system(IN_PROCESS, read)
    asyncio.run(_levels(ProviderClient(engine, load.max_new_tokens).send, jobs, load, sink))
    return data


async def _on_server(
    base_url: str,
    model: str,
    posted: Sequence[Any],
    jobs: Sequence[Sequence[Job]],
    load: Load,
    results: _Results,
    name: str,
) -> None:
    """Post the documents, then run every level against the server."""
    documents = await post_documents(base_url, [s.document for s in posted])
    sink = results.system(name, documents)
    ids = [d["id"] for d in documents]
    client = ServerClient(base_url, model, ids, load.max_new_tokens)
    try:
        await _levels(client.send, jobs, load, sink)
    finally:
        await client.close()


async def _levels(
    send: Callable[[Job], Awaitable[dict[str, Any]]],
    jobs: Sequence[Sequence[Job]],
    load: Load,
    sink: LevelSink,
) -> None:
    """Every concurrency level on one system, one after another."""
    for concurrency, level in zip(load.concurrency, jobs, strict=True):
        before = os.getloadavg()[0]
        records, wall = await run_level(send, level, concurrency)
        summary: dict[str, Any] = {"concurrency": concurrency}
        summary |= level_summary(records, level, wall, load.max_new_tokens)
        summary["load_average"] = [round(before, 2), round(os.getloadavg()[0], 2)]
        sink(summary, records)


def _progress_line(level: dict[str, Any]) -> str:
    return (
        f"C={level['concurrency']}: {level['completed']}/{level['requests']} complete, "
        f"{level['requests_per_second']:.3f} req/s, p50 {level['p50_latency']} s, "
        f"429s {level['rate_limited']}, errors {level['errors']}, "
        f"exactly once: {'yes' if level['exactly_once'] else 'NO'}"
    )
