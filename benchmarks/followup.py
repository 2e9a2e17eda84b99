"""Read once, ask many: the first question against a follow-up from the document's memory.

``python -m benchmarks followup --lengths 8192 32768`` builds one needle sample per length,
reads its document once (``engine.read``, question-free) and then, for each answer config
(the engine's re-read and the paper's single pass, both from the same memory, since the
re-read budget is chosen when answering), answers the sample's question (the first
question: read + answer) and a second question (the follow-up: from memory), each exactly
``max_new_tokens`` long (``min_new_tokens`` holds off the end of sequence). It records time
to first token and total time, and decode tokens/s beside plain transformers ``generate``
on the same model at 2K tokens of context, measured right after each follow-up (the
machine's speed drifts over a run), and at the run's start and end with transformers'
default cache and with its static cache. Results:
``benchmarks/results/followup.json``, rendered into BENCHMARKS.md.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
from tabulate import tabulate

from . import machine
from .paths import Paths, load_json, save_json
from .scoring import score
from .tasks import make_sample

RESULTS = "followup.json"
FOLLOW_UP = "What is the document about? Answer in one sentence."
ANSWER_CONFIGS: dict[str, dict[str, Any]] = {
    "re-read (default)": {},
    "single pass (paper)": {"reread_tokens": 0},
}
"""Answer-time settings tried on the same memory (on top of the engine's config)."""
GENERATE_CONTEXT = 2048
"""Context of the plain ``generate`` reference, inside the model's trained window."""


def timed_answer(engine: Any, document: Any, question: str, max_new_tokens: int) -> dict[str, Any]:
    """Stream one answer about ``document`` (text or a memory): time to first token, total,
    the stats; exactly ``max_new_tokens`` long."""
    started = time.perf_counter()
    first = None
    with engine.stream(
        document, question, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens
    ) as stream:
        for _ in stream:
            if first is None:
                first = time.perf_counter() - started
        answer = stream.collect()
    total = time.perf_counter() - started
    stats = answer.stats
    return {
        "text": answer.text,
        "ttft_seconds": first if first is not None else total,
        "total_seconds": total,
        "tokens_generated": stats.tokens_generated,
        "decode_tokens_per_second": (
            (stats.tokens_generated - 1) / stats.decode_seconds
            if stats.decode_seconds > 0 and stats.tokens_generated > 1
            else None
        ),
        "reread_tokens": stats.reread_tokens,
        "mode": stats.mode,
    }


def generate_decode_rate(
    engine: Any,
    tokens: int,
    context: int = GENERATE_CONTEXT,
    *,
    cache_implementation: str | None = None,
) -> float:
    """Plain transformers ``generate`` decode tokens/s at ``context`` tokens (greedy).

    The time of a 1-token ``generate`` (the prefill) is subtracted from a ``tokens``-token
    one, on the same input. ``cache_implementation``: ``generate``'s own option (``None``:
    its default, the dynamic cache; ``"static"``: preallocated).
    """
    cache = {"cache_implementation": cache_implementation} if cache_implementation else {}
    model = engine.model
    torch.manual_seed(0)
    ids = torch.randint(100, 10_000, (1, context), device=model.device)

    def run(n: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                ids,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                attention_mask=torch.ones_like(ids),
                pad_token_id=engine.tokenizer.eos_token_id,
                **cache,
            )
        return time.perf_counter() - started

    run(2)  # warm-up
    prefill = run(1)
    whole = run(tokens)
    return (tokens - 1) / max(1e-9, whole - prefill)


def run_followup(
    engine: Any,
    paths: Paths,
    lengths: Sequence[int],
    *,
    max_new_tokens: int = 32,
    seed: int = 0,
    command: str | None = None,
) -> dict[str, Any]:
    """Measure first vs follow-up questions at each length; saves after every length."""
    rows: list[dict[str, Any]] = []
    data: dict[str, Any] = {
        "meta": {
            "command": command or "benchmarks.followup.run_followup",
            "machine": machine.describe(str(engine.model.device)),
            "model": engine.model_name,
            "config": dataclasses.asdict(engine.config),
            "max_new_tokens": max_new_tokens,
            "follow_up": FOLLOW_UP,
        },
        "generate_2k": _generate_rates(engine, max_new_tokens),
        "rows": rows,
    }
    for length in lengths:
        sample = make_sample(engine.tokenizer, "needle", length, None, seed)
        memory = engine.read(sample.document, mode="qllm")
        for name, changes in ANSWER_CONFIGS.items():
            view = dataclasses.replace(memory, config=memory.config.replace(**changes))
            first = timed_answer(engine, view, sample.question, max_new_tokens)
            follow = timed_answer(engine, view, FOLLOW_UP, max_new_tokens)
            follow["generate_2k_next"] = generate_decode_rate(engine, max_new_tokens)
            rows.append(
                {
                    "length": length,
                    "tokens": memory.tokens,
                    "config": name,
                    "read_seconds": memory.read_seconds,
                    "first": first | {"correct": score(sample.expected, first["text"])},
                    "follow_up": follow,
                }
            )
            data["meta"]["date"] = machine.now()
            data["meta"]["load_average"] = round(os.getloadavg()[0], 2)
            save_json(paths.results / RESULTS, data)
    for kind, rates in _generate_rates(engine, max_new_tokens).items():
        data["generate_2k"][kind] += rates
    save_json(paths.results / RESULTS, data)
    return data


def _generate_rates(engine: Any, tokens: int) -> dict[str, list[float]]:
    """``generate``'s decode tokens/s at 2K, with its default cache and its static one."""
    return {
        "dynamic": [generate_decode_rate(engine, tokens)],
        "static": [generate_decode_rate(engine, tokens, cache_implementation="static")],
    }


def followup_section(paths: Paths) -> str | None:
    """The BENCHMARKS.md section, or ``None`` before the command has run."""
    data = load_json(paths.results / RESULTS)
    if not data:
        return None
    meta = data["meta"]
    rates = data["generate_2k"]
    table = []
    for row in data["rows"]:
        first, follow = row["first"], row["follow_up"]
        first_total = row["read_seconds"] + first["total_seconds"]
        decode = follow["decode_tokens_per_second"]
        table.append(
            [
                f"{row['tokens']:,}",
                row["config"],
                "yes" if first["correct"] else "no",
                round(first_total, 1),
                round(follow["ttft_seconds"], 2),
                round(follow["total_seconds"], 2),
                round(first_total / follow["total_seconds"], 1),
                follow["tokens_generated"],
                None if decode is None else round(decode, 1),
                round(follow["generate_2k_next"], 1),
                None if decode is None else round(decode / follow["generate_2k_next"], 2),
            ]
        )
    headers = [
        "document tokens",
        "answer config",
        "first correct",
        "first question s (read + answer)",
        "follow-up time to first token s",
        "follow-up total s",
        "first / follow-up",
        "follow-up tokens",
        "follow-up decode tok/s",
        "generate at 2K tok/s, measured next",
        "decode vs generate at 2K",
    ]
    lengths = {r[k]["tokens_generated"] for r in data["rows"] for k in ("first", "follow_up")}
    fixed = "exactly" if lengths == {meta["max_new_tokens"]} else "at most"
    box = meta["machine"]
    machine_line = (
        f"- Machine: {box['cpu']}, {box['cores']} cores, {box['ram_gib']} GiB RAM; device "
        f"`{box['device']}`; 1-minute load average {meta.get('load_average', '?')} at the end "
        "(this run's own load included; compare within this table only)\n"
    )
    return (
        "## Read once, ask many (first question vs follow-up)\n\n"
        f"- Command: `{meta['command']}` ({meta.get('date', '')})\n"
        f"{machine_line}"
        f"- Model: {meta['model']}; answers of {fixed} {meta['max_new_tokens']} tokens; the "
        f"follow-up asks {meta['follow_up']!r} from the memory of the first.\n"
        "- Plain transformers `generate` on the same model, 2K-token context, same run: "
        "measured right after each follow-up with its default (dynamic) cache, the reference "
        "of the last column; at the run's start and end "
        f"{_listed(rates['dynamic'])} decode tokens/s, and with "
        f"`cache_implementation='static'` {_listed(rates['static'])}.\n\n"
        + tabulate(table, headers, tablefmt="github")
        + "\n"
    )


def _listed(rates: list[float]) -> str:
    return " and ".join(f"{rate:.1f}" for rate in rates)
