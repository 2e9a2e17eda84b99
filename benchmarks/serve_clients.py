"""The load's clients: one request in, one record out, and what the records must show.

A :class:`Job` is one request of a level. :class:`ServerClient` sends it to a running
``quickllama serve`` with the stock ``openai`` async client; :class:`ProviderClient` sends
it to ``ChatQLLM`` over a local engine. Both stream the answer and write the same record
(status, response ids, ``finish_reason`` chunks, usage chunks, time to first token,
latency, error), so :func:`exactly_once_problems` and :func:`level_summary` read both alike.
:func:`run_level` runs C clients over a level's jobs.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

NEW, FOLLOW = "new", "follow-up"
REQUEST_SECONDS = 900.0
"""A client gives up on a request after this long (an error, never a hang)."""


@dataclass(frozen=True)
class Job:
    """One request of a level."""

    index: int
    kind: str
    """:data:`NEW` (the document is in the messages) or :data:`FOLLOW` (``document_id``)."""
    document: str
    question: str
    posted: int | None = None
    """For a follow-up: which posted document it asks about."""


def _record(job: Job) -> dict[str, Any]:
    return {
        "job": job.index,
        "kind": job.kind,
        "status": None,
        "ids": [],
        "finish_reasons": [],
        "usage_tokens": [],
        "ttft_seconds": None,
        "latency_seconds": None,
        "chars": 0,
        "replica": None,
        "error": None,
    }


def _chunk_seen(record: dict[str, Any], started: float, chunk_id: str, text: str) -> None:
    if chunk_id not in record["ids"]:
        record["ids"].append(chunk_id)
    if text:
        record["chars"] += len(text)
        if record["ttft_seconds"] is None:
            record["ttft_seconds"] = time.perf_counter() - started


class ServerClient:
    """Sends jobs to a running server with the stock ``openai`` async client.

    Records which process answered (the server's ``x-quickllama-replica`` header).
    """

    def __init__(self, base_url: str, model: str, document_ids: Sequence[str], tokens: int):
        import openai

        from qllm_integrations.serve.app import REPLICA_HEADER

        self.replica_header = REPLICA_HEADER
        self.client = openai.AsyncOpenAI(
            base_url=f"{base_url}/v1", api_key="none", max_retries=0, timeout=REQUEST_SECONDS
        )
        self.model, self.document_ids, self.tokens = model, list(document_ids), tokens

    async def send(self, job: Job) -> dict[str, Any]:
        """Stream one job's answer; its record (status 200 once the stream opened)."""
        import httpx
        import openai

        record, started = _record(job), time.perf_counter()
        extra: dict[str, Any] = {"min_new_tokens": self.tokens}
        messages: list[Any]
        if job.kind == FOLLOW:
            messages = [{"role": "user", "content": job.question}]
            extra["document_id"] = self.document_ids[job.posted or 0]
        else:
            messages = [
                {"role": "system", "content": job.document},
                {"role": "user", "content": job.question},
            ]
        try:
            stream = await self.client.chat.completions.create(
                model=self.model,
                messages=messages,
                max_tokens=self.tokens,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra,
            )
            record["status"] = 200
            record["replica"] = stream.response.headers.get(self.replica_header)
            async for chunk in stream:
                text = "".join(c.delta.content or "" for c in chunk.choices)
                _chunk_seen(record, started, chunk.id, text)
                record["finish_reasons"] += [
                    c.finish_reason for c in chunk.choices if c.finish_reason
                ]
                if chunk.usage is not None:
                    record["usage_tokens"].append(chunk.usage.completion_tokens)
        except openai.APIStatusError as error:
            record["status"] = error.status_code
            record["error"] = f"{error.status_code}: {error.message}"[:300]
        except (openai.APIError, httpx.HTTPError) as error:  # a broken connection or stream
            record["error"] = f"{type(error).__name__}: {error}"[:300]
        record["latency_seconds"] = time.perf_counter() - started
        return record

    async def close(self) -> None:
        """Close the client's connections."""
        await self.client.close()


class ProviderClient:
    """Sends jobs to ``ChatQLLM`` over a local engine (``astream``), as an app would in-process."""

    def __init__(self, engine: Any, tokens: int):
        from qllm_integrations.langchain import ChatQLLM

        settings = {"max_new_tokens": tokens, "min_new_tokens": tokens, "progress": False}
        self.new = ChatQLLM(engine=engine, **settings)
        self.follow = ChatQLLM(engine=engine, read_once=True, **settings)

    async def send(self, job: Job) -> dict[str, Any]:
        """Stream one job's answer; its record (status 200 once the stream started)."""
        from langchain_core.messages import HumanMessage, SystemMessage

        record, started = _record(job), time.perf_counter()
        if job.kind == FOLLOW:
            chunks = self.follow.astream([HumanMessage(job.question)], document=job.document)
        else:
            chunks = self.new.astream([SystemMessage(job.document), HumanMessage(job.question)])
        record["status"] = 200
        try:
            async for chunk in chunks:
                _chunk_seen(record, started, str(chunk.id), str(chunk.content))
                reason = chunk.response_metadata.get("finish_reason")
                if reason:
                    record["finish_reasons"].append(reason)
                if chunk.usage_metadata:
                    record["usage_tokens"].append(chunk.usage_metadata["output_tokens"])
        except Exception as error:  # noqa: BLE001 - recorded: the check counts it
            record["error"] = f"{type(error).__name__}: {error}"[:300]
        record["latency_seconds"] = time.perf_counter() - started
        return record


async def run_level(
    send: Callable[[Job], Awaitable[dict[str, Any]]], jobs: Sequence[Job], concurrency: int
) -> tuple[list[dict[str, Any] | None], float]:
    """``concurrency`` clients, each sending the next job not yet taken until none is left.

    Returns the records in job order (``None`` for a job whose client never came back)
    and the wall seconds.
    """
    records: list[dict[str, Any] | None] = [None] * len(jobs)
    pending = iter(enumerate(jobs))

    async def client() -> None:
        for at, job in pending:  # one event loop: the shared iterator hands each job out once
            records[at] = await send(job)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return records, time.perf_counter() - started


# --- the exactly-once check and the level's numbers ------------------------------------


def answer_problems(record: dict[str, Any], max_new_tokens: int) -> list[str]:
    """Why an accepted request's record is not one complete answer; ``[]`` when it is.

    Complete: no error after the stream opened, exactly one ``finish_reason``, one usage
    chunk that counts ``max_new_tokens`` tokens, and one response id on every chunk.
    """
    problems = []
    if record["error"]:
        problems.append(f"accepted, then {record['error']}")
    if len(record["finish_reasons"]) != 1:
        problems.append(f"{len(record['finish_reasons'])} finish_reason chunks")
    if len(record["usage_tokens"]) != 1:
        problems.append(f"{len(record['usage_tokens'])} usage chunks")
    elif record["usage_tokens"][0] != max_new_tokens:
        problems.append(f"{record['usage_tokens'][0]} of {max_new_tokens} tokens")
    if len(record["ids"]) != 1:
        problems.append(f"{len(record['ids'])} response ids in one stream")
    return problems


def exactly_once_problems(
    records: Sequence[dict[str, Any] | None], jobs: Sequence[Job], max_new_tokens: int
) -> list[str]:
    """What breaks "every accepted request got exactly one complete answer"; ``[]`` if none.

    Lost: a job without a record (neither an answer nor an error came back). Incomplete:
    an accepted request (status 200: its stream opened) whose record
    :func:`answer_problems` finds fault with. Duplicated: a response id in two requests.
    Refused requests (429, other statuses) are counted by :func:`level_summary`, not here.
    """
    problems = []
    if len(records) != len(jobs):
        problems.append(f"{len(records)} records for {len(jobs)} requests")
    owner: dict[str, int] = {}
    for job, record in zip(jobs, records, strict=False):
        if record is None:
            problems.append(f"request {job.index}: lost (no answer, no error)")
            continue
        if record["status"] != 200:
            continue
        problems += [f"request {job.index}: {p}" for p in answer_problems(record, max_new_tokens)]
        for response_id in record["ids"]:
            if response_id in owner:
                problems.append(
                    f"request {job.index}: response {response_id} also answered request "
                    f"{owner[response_id]}"
                )
            owner[response_id] = job.index
    return problems


def _percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile (``None`` for no values)."""
    ordered = sorted(values)
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 2)


def level_summary(
    records: Sequence[dict[str, Any] | None], jobs: Sequence[Job], wall: float, tokens: int
) -> dict[str, Any]:
    """The level's numbers, its exactly-once verdict and its response ids."""
    got = [r for r in records if r is not None]
    problems = exactly_once_problems(records, jobs, tokens)
    done = [r for r in got if r["status"] == 200 and not answer_problems(r, tokens)]
    latency = [r["latency_seconds"] for r in done]
    ttft = [r["ttft_seconds"] for r in done if r["ttft_seconds"] is not None]
    return {
        "wall_seconds": round(wall, 3),
        "requests": len(jobs),
        "new_documents": sum(j.kind == NEW for j in jobs),
        "accepted": sum(r["status"] == 200 for r in got),
        "completed": len(done),
        "requests_per_second": round(len(done) / wall, 4),
        "p50_latency": _percentile(latency, 0.5),
        "p95_latency": _percentile(latency, 0.95),
        "p99_latency": _percentile(latency, 0.99),
        "p50_ttft": _percentile(ttft, 0.5),
        "p95_ttft": _percentile(ttft, 0.95),
        "rate_limited": sum(r["status"] == 429 for r in got),
        "errors": sum(r["status"] != 429 and bool(r["error"]) for r in got),
        "error_samples": sorted({r["error"] for r in got if r["error"]})[:5],
        "replicas": dict(Counter(r["replica"] for r in done if r["replica"])),
        "exactly_once": not problems,
        "problems": problems[:20],
        "response_ids": [r["ids"][0] if r and r["ids"] else None for r in records],
    }
