"""A million tokens, read once: several planted questions answered from one document memory.

``python -m benchmarks million --set offload_dir=/path/on/disk`` builds one document of
``--tokens`` tokens (default 1,000,000) with the facts of a needle and a two_hop sample
planted at random depths (:func:`~benchmarks.tasks.make_joint_samples`, seed 0), reads it
once with ``engine.read`` (question-free, the read-once path of the providers; a
million tokens' keys and values need the disk tier on a machine with less RAM than
``tokens x kv_bytes_per_token``), and answers each question from that memory:

- ``re-read (default)``: the engine's own answer, with the passages its ranking chose;
  ``inside`` says whether every fact of the question lay inside them and
  ``passage_rank`` which of them (0 = the best scored) held the last-found fact;
- ``single pass (paper)``: the same memory with ``reread_tokens=0``;
- ``oracle``: the answer's passage alone (:func:`~benchmarks.passages.oracle_passages`),
  the model's ceiling;
- ``rag``: chunk-and-embed RAG over the same document (:mod:`benchmarks.rag`).

A rerun resumes: answers already recorded for the same samples are kept, and the
document is read again only when a re-read or single-pass answer is missing
(``--systems rag`` adds RAG to a finished run without reading a million tokens again).

It records the read's time and tokens/s, the process's peak RSS (file pages of the disk
tier that are resident count in it), and each answer's time. The read took 41 minutes
on a 2-core CPU (2026-12-06); the summary is saved after the read and after every answer
(``benchmarks/results/million.json``), rendered into BENCHMARKS.md.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from tabulate import tabulate

from . import machine
from .memory import mark, peak_since
from .passages import answer_variant, commands_of, fact_spans, sample_prompt
from .paths import Paths, load_json, save_json
from .scoring import score
from .tasks import Sample, make_joint_samples

RESULTS = "million.json"
TOKENS = 1_000_000
TASKS = ("needle", "two_hop")
ANSWER_CONFIGS: dict[str, dict[str, Any]] = {
    "re-read (default)": {},
    "single pass (paper)": {"reread_tokens": 0},
}
"""Answer-time settings tried on the same memory (on top of the engine's config)."""
SYSTEMS = (*ANSWER_CONFIGS, "oracle", "rag")
"""What answers each question: the memory's configs, the oracle, chunk-and-embed RAG."""


def inside_passages(sample: Sample, blocks: tuple[Any, ...]) -> tuple[bool, int | None]:
    """Whether every fact of ``sample`` lies inside one of the re-read's passages
    (``blocks``: ``AnswerStats.retrieved_blocks``), and the worst score rank, over the
    facts, of the passage that holds each (``None`` when one is outside)."""
    order = sorted(range(len(blocks)), key=lambda i: -blocks[i].score)
    ranks = []
    for start, end in sample.evidence:
        holding = [
            rank
            for rank, i in enumerate(order)
            if blocks[i].char_start is not None
            and blocks[i].char_start <= start
            and end <= blocks[i].char_end
        ]
        if not holding:
            return False, None
        ranks.append(holding[0])
    return bool(ranks), max(ranks)


def run_million(
    engine: Any,
    paths: Paths,
    *,
    tokens: int = TOKENS,
    tasks: tuple[str, ...] = TASKS,
    seed: int = 0,
    systems: tuple[str, ...] = SYSTEMS,
    command: str | None = None,
) -> dict[str, Any]:
    """Read one joint document once and answer each of its questions; saves as it goes.

    Resumes: answers already in the results for the same samples are kept, and the
    document is read only when a system of :data:`ANSWER_CONFIGS` still has to answer.
    """
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown systems {unknown}; choose from {SYSTEMS}")
    samples = make_joint_samples(engine.tokenizer, tasks, tokens, seed)
    device = engine.model.device
    described = [
        {
            "sample_id": s.sample_id,
            "task": s.task,
            "question": s.question,
            "expected": list(s.expected),
            "facts": [s.document[a:b] for a, b in s.evidence],
            "depths": [round(a / len(s.document), 3) for a, _ in s.evidence],
        }
        for s in samples
    ]
    earlier = load_json(paths.results / RESULTS) or {}
    if earlier.get("samples") != described:
        earlier = {}
    command = command or "benchmarks.million.run_million"
    data: dict[str, Any] = {
        "meta": {
            "commands": commands_of(paths.results / RESULTS, command) if earlier else [command],
            "machine": machine.describe(str(device)),
            "model": engine.model_name,
            "config": dataclasses.asdict(engine.config),
            "started": earlier.get("meta", {}).get("started", machine.now()),
        },
        "samples": described,
        "answers": earlier.get("answers", []),
    }
    if "read" in earlier:
        data["read"] = earlier["read"]
    done = {(a["sample_id"], a["system"]) for a in data["answers"]}
    todo = [(s, name) for s in samples for name in systems if (s.sample_id, name) not in done]
    save_json(paths.results / RESULTS, data)
    memory = None
    before = mark(device)
    if any(name in ANSWER_CONFIGS for _, name in todo):
        memory = engine.read(samples[0].document)
        peak, growth, exact = peak_since(before, device)
        data["read"] = {
            "tokens": memory.tokens,
            "seconds": memory.read_seconds,
            "tokens_per_second": memory.tokens / memory.read_seconds,
            "mode": memory.config.mode,
            "peak_rss_mib": peak,
            "growth_mib": growth,
            "exact": exact,
            "load_average": round(os.getloadavg()[0], 2),
        }
        save_json(paths.results / RESULTS, data)
    rag = None
    for sample, name in todo:
        started = time.perf_counter()
        if name in ANSWER_CONFIGS:
            assert memory is not None
            changes = ANSWER_CONFIGS[name]
            view = dataclasses.replace(memory, config=memory.config.replace(**changes))
            answer = engine.answer(view, sample.question, max_new_tokens=sample.max_new_tokens)
            blocks = answer.stats.retrieved_blocks if answer.stats.reread_tokens else ()
            inside, rank = inside_passages(sample, blocks) if blocks else (None, None)
            text, reread = answer.text, answer.stats.reread_tokens
        elif name == "oracle":
            layout = sample_prompt(engine, sample)
            spans = fact_spans(layout, sample)
            oracle = answer_variant(engine, sample, layout, {"fact_spans": spans}, "oracle")
            text, reread, inside, rank = oracle["answer"], oracle["reread_tokens"], True, None
        else:
            if rag is None:
                from .rag import RagSystem, minilm_embeddings

                rag = RagSystem(engine, minilm_embeddings())
            said = rag.answer(sample)
            text, reread = said.text, said.tokens_read
            inside, rank = said.evidence_rank is not None, said.evidence_rank
        _add(
            data,
            paths,
            sample,
            name,
            text,
            seconds=time.perf_counter() - started,
            reread_tokens=reread,
            inside=inside,
            passage_rank=rank,
        )
    if memory is not None:
        data["read"]["peak_rss_mib_end"] = peak_since(before, device)[0]
    data["answers"].sort(key=lambda a: (a["task"], SYSTEMS.index(a["system"])))
    save_json(paths.results / RESULTS, data)
    return data


def _add(
    data: dict[str, Any], paths: Paths, sample: Sample, system: str, text: str, **fields: Any
) -> None:
    data["answers"].append(
        {
            "sample_id": sample.sample_id,
            "task": sample.task,
            "system": system,
            "answer": text,
            "correct": score(sample.expected, text),
        }
        | fields
    )
    data["meta"]["date"] = machine.now()
    save_json(paths.results / RESULTS, data)


def million_section(paths: Paths) -> str | None:
    """The BENCHMARKS.md section, or ``None`` before the command has run."""
    data = load_json(paths.results / RESULTS)
    if not data:
        return None
    meta, read = data["meta"], data.get("read")
    box = meta["machine"]
    config = meta["config"]
    lines = [
        "## A million tokens, read once\n",
        "- Commands: "
        + ", then ".join(f"`{c}`" for c in meta.get("commands") or [meta["command"]])
        + f" (started {meta['started']}, last saved {meta.get('date', meta['started'])})",
        f"- Machine: {box['cpu']}, {box['cores']} cores, {box['ram_gib']} GiB RAM; device "
        f"`{box['device']}`",
        f"- Model: {meta['model']}; memory blocks in "
        f"{config['offload_dtype'] or 'the model dtype'}, disk tier `{config['offload_dir']}`",
        "- One document, the facts of every question planted in it; read once "
        "(`engine.read`, no question), then each question answered from that memory. "
        "`oracle`: the facts' own passages alone; `rag`: chunk-and-embed RAG over the "
        "same document (`benchmarks/rag.py`), its facts inside when a retrieved chunk "
        "holds one, its time with indexing.",
    ]
    for s in data["samples"]:
        facts = "; ".join(
            f"{fact!r} at {depth:.0%}" for fact, depth in zip(s["facts"], s["depths"], strict=True)
        )
        lines.append(f"- `{s['task']}`: {s['question']!r}, expects {s['expected']}; {facts}")
    if read is None:
        lines.append("- The read had not finished when this was rendered.")
    else:
        end = read.get("peak_rss_mib_end")
        lines.append(
            f"- Read: {read['tokens']:,} tokens in {read['seconds'] / 60:.1f} min "
            f"({read['tokens_per_second']:.0f} tok/s, mode `{read['mode']}`); peak RSS "
            f"{read['peak_rss_mib'] / 1024:.1f} GiB after the read"
            + ("" if end is None else f", {end / 1024:.1f} GiB after the answers")
            + f"; 1-minute load average {read['load_average']} at the read's end"
        )
    rows = [
        [
            a["task"],
            a["system"],
            "yes" if a["correct"] else "no",
            {None: "-", True: "yes", False: "no"}[a["inside"]],
            "-" if a["passage_rank"] is None else a["passage_rank"],
            f"{a['reread_tokens']:,}",
            round(a["seconds"], 1),
            a["answer"].strip().replace("\n", " ").replace("|", "\\|")[:120],
        ]
        for a in data["answers"]
    ]
    headers = [
        "task",
        "system",
        "correct",
        "facts inside the re-read",
        "passage rank",
        "re-read tokens",
        "answer s",
        "answer",
    ]
    return "\n".join(lines) + "\n\n" + tabulate(rows, headers, tablefmt="github") + "\n"
