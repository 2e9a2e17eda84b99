"""Retrieval apart from reading: does the re-read hold the answer, and is it read right?

``python -m benchmarks passages --task-set realdocs`` (or ``standard``) reads each sample
once, as the default does (mode ``qllm``, question before and after the document), and
keeps every memory block's relevance under each ranking of
:data:`qllm_core.memory.retrieval.RANKINGS` (averaged over layers). Each re-read variant of
:data:`VARIANTS` then chooses its passages from those scores, re-reads them with the model's
own attention and answers, exactly as the engine configured that way would (a test checks
it), so all variants and the oracle are paired on the same read:

- the rank of the block holding each fact (0 = first; the worst over a sample's facts),
  whether every fact is inside the re-read, the re-read's length, the answer;
- ``oracle``: the answer's passage alone (the fact widened to :data:`ORACLE_TOKENS`
  tokens) in place of the document: the model's ceiling, what no ranking can beat;
- ``qllm`` (when asked for): the paper's single pass, decoded from the read itself with
  no re-read, exactly as ``engine.answer`` in mode ``qllm`` with ``reread_tokens=0``
  (a test checks it).

Records go to ``benchmarks/out/passages-<set>/`` (resumable: a rerun skips what is there;
new variants re-use the stored reads) and the summary to ``results/passages-<set>.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import machine, runner
from .passages_report import HEATMAP, HEATMAP_SYSTEMS
from .paths import Paths, load_json, save_json
from .scoring import overlaps, score
from .tasks import Sample, make_sample

ORACLE_TOKENS = 512
"""Tokens of the oracle passage around each fact."""
SINGLE_PASS = "qllm"
"""The variant answered from the read itself (the paper's method, no re-read)."""


@dataclass(frozen=True)
class Variant:
    """How a re-read chooses its passages (the ``QLLMConfig.reread_*`` fields), and the
    generation options its answer is decoded with (``repetition_penalty``, ...)."""

    ranking: str
    tokens: int
    min_tokens: int = 0
    ratio: float = 0.0
    neighbours: float = 0.0
    layers: tuple[int, ...] | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def config_fields(self) -> dict[str, Any]:
        """The engine config that re-reads this way."""
        return {
            "reread_ranking": self.ranking,
            "reread_tokens": self.tokens,
            "reread_min_tokens": self.min_tokens,
            "reread_score_ratio": self.ratio,
            "reread_neighbours": self.neighbours,
            "reread_layers": self.layers,
        }


VARIANTS: dict[str, Variant] = {
    "mean-3072": Variant("mean", 3072),  # the default before issue 28
    "peak-3072": Variant("peak", 3072),
    "peak-1536": Variant("peak", 1536),
    "token_peak-1536": Variant("token_peak", 1536),
    "peak-sized": Variant("peak", 3072, min_tokens=768, ratio=0.5),
    "peak-sized-nb0.25": Variant("peak", 3072, min_tokens=768, ratio=0.5, neighbours=0.25),
    # the 12 layers that rank the answer's block first most often on the 38 real-document
    # questions (benchmarks/results/ranking-realdocs.json); needs the layers dump
    "peak-sized-l12-nb0.25": Variant(
        "peak",
        3072,
        min_tokens=768,
        ratio=0.5,
        neighbours=0.25,
        layers=(2, 7, 8, 12, 14, 15, 17, 18, 21, 22, 23, 24),
    ),
    # repetition control (issue 24): the default's passages, decoded with a guard
    "peak-sized-ngram6": Variant(
        "peak", 3072, min_tokens=768, ratio=0.5, options=(("no_repeat_ngram_size", 6),)
    ),
    "peak-sized-penalty1.1": Variant(
        "peak", 3072, min_tokens=768, ratio=0.5, options=(("repetition_penalty", 1.1),)
    ),
}
"""Re-read variants answered by default; ``oracle`` is always answered too."""


def fact_spans(layout: Any, sample: Sample) -> list[tuple[int, int]]:
    """Prompt token span ``[start, end)`` of each fact (tokens overlapping its chars)."""
    doc_start = layout.document_span[0]
    spans = []
    for span in sample.evidence:
        hits = [
            doc_start + i
            for i, (lo, hi) in enumerate(layout.document_offsets or [])
            if overlaps(span, lo, hi)
        ]
        if hits:
            spans.append((hits[0], hits[-1] + 1))
    return spans


def block_ranks(
    relevance: list[float], spans: list[tuple[int, int]], n_init: int, block_size: int
) -> list[int | None]:
    """Per fact, the best rank of a memory block it overlaps (``None``: in no block)."""
    order = torch.tensor(relevance).argsort(descending=True, stable=True).tolist()
    rank_of = {block: rank for rank, block in enumerate(order)}
    out: list[int | None] = []
    for lo, hi in spans:
        first, last = (lo - n_init) // block_size, (hi - 1 - n_init) // block_size
        ranks = [rank_of[b] for b in range(first, last + 1) if b in rank_of]
        out.append(min(ranks) if ranks else None)
    return out


def read_prompt(engine: Any, layout: Any) -> tuple[Any, torch.Tensor]:
    """The default's read of ``layout`` (mode ``qllm``, ranked by the final question).

    Returns the forward step, whose ``memory`` holds the read, and the last logits.
    Call under ``torch.inference_mode()``.
    """
    from qllm_core.memory.request import RequestPlan

    config = engine.config.replace(mode="qllm")
    plan = RequestPlan(
        question_span=layout.question_span,
        record_from=layout.final_question_span[0],
        rank_span=layout.final_question_span,
    )
    step = engine.new_forward(config, plan)
    ids = layout.input_ids
    for start in range(0, len(ids), config.prefill_chunk_size):
        logits = step(ids[start : start + config.prefill_chunk_size])
    return step, logits


def read_sample(
    engine: Any, sample: Sample, layout: Any, *, single_pass: bool = False
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The default's read of ``sample``: block relevance per ranking, fact ranks, timing.

    ``layout``: the sample's prompt (:func:`sample_prompt`). With ``single_pass``, also
    the :data:`SINGLE_PASS` answer record, decoded greedily from the read once the
    relevance is taken (else ``None``).
    """
    from qllm_core.answering.decoding import decode
    from qllm_core.memory.retrieval import RANKINGS
    from qllm_core.options import GenerationOptions

    config = engine.config.replace(mode="qllm")
    ids = layout.input_ids
    started = time.perf_counter()
    with torch.inference_mode():
        step, logits = read_prompt(engine, layout)
        read_seconds = time.perf_counter() - started
        relevance = {
            name: step.memory.block_relevance(name).mean(dim=0).tolist() for name in RANKINGS
        }
        rank_seconds = time.perf_counter() - started - read_seconds
        single = None
        if single_pass:
            options = GenerationOptions.from_kwargs(max_new_tokens=sample.max_new_tokens)
            decoding = decode(step, logits, options, engine.tokenizer, engine.eos_token_ids)
            decode_started = time.perf_counter()
            decoded = _result(decoding)
            single = {
                "sample_id": sample.sample_id,
                "task": sample.task,
                "length": sample.length,
                "variant": SINGLE_PASS,
                "answer": decoded.text,
                "correct": score(sample.expected, decoded.text),
                "finish_reason": decoded.finish_reason,
                "tokens_generated": decoded.tokens,
                "inside": None,  # no re-read: nothing to be inside
                "reread_tokens": 0,
                "prefill_seconds": 0.0,  # its read is the one every variant shares
                "decode_seconds": time.perf_counter() - decode_started,
            }
    spans = fact_spans(layout, sample)
    record = {
        "sample_id": sample.sample_id,
        "task": sample.task,
        "length": sample.length,
        "depth": sample.depth,
        "prompt_tokens": len(ids),
        "read_seconds": read_seconds,
        "rank_seconds": rank_seconds,
        "fact_spans": spans,
        "ranks": {
            name: block_ranks(scores, spans, config.n_init, config.block_size)
            for name, scores in relevance.items()
        },
        "relevance": relevance,
    }
    return record, single


def layer_relevance(log_mass: list[torch.Tensor], ranking: str) -> torch.Tensor:
    """Each layer's relevance under ``ranking`` from the ``log_mass`` of one dump of
    :mod:`benchmarks.layers`: (layers, blocks) float32, as the engine ranks it."""
    from qllm_core.memory.retrieval import block_relevance

    return torch.stack([block_relevance(m.float(), ranking) for m in log_mass])


def _result(generator: Any) -> Any:
    """Run ``generator`` to its end; its return value."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


def oracle_passages(layout: Any, spans: list[tuple[int, int]]) -> list[Any]:
    """Each fact widened to :data:`ORACLE_TOKENS` tokens inside the document, merged."""
    from qllm_core.answering.reread import Passage

    doc_start, doc_end = layout.document_span
    out: list[Any] = []
    for lo, hi in sorted(spans):
        pad = max(0, ORACLE_TOKENS - (hi - lo)) // 2
        start, end = max(doc_start, lo - pad), min(doc_end, hi + pad)
        if out and start <= out[-1].end:
            out[-1] = Passage(out[-1].start, max(end, out[-1].end), 0.0)
        else:
            out.append(Passage(start, end, 0.0))
    return out


def sample_prompt(engine: Any, sample: Sample) -> Any:
    """The prompt the default reads for ``sample`` (question, document, question)."""
    from qllm_core.inputs.prompt import build_prompt

    return build_prompt(engine.tokenizer, sample.document, sample.question)


def answer_variant(
    engine: Any,
    sample: Sample,
    layout: Any,
    read: dict[str, Any],
    name: str,
    per_layer: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Re-read ``sample`` as variant ``name`` (or ``oracle``) from its stored read and answer.

    ``layout``: the sample's prompt (:func:`sample_prompt`), as read. ``per_layer``: each
    layer's relevance under the variant's ranking, (layers, blocks), which a variant
    that names ``layers`` needs (:func:`layer_relevance`).
    """
    from qllm_core.answering.reread import SEPARATOR, passages_for, reread_ids
    from qllm_core.inputs.prompt import encode_text
    from qllm_core.memory.retrieval import block_scores, with_neighbours

    config = engine.config
    spans = [tuple(s) for s in read["fact_spans"]]
    if name == "oracle":
        passages = oracle_passages(layout, spans)
    else:
        variant = VARIANTS[name]
        if variant.layers is not None:
            if per_layer is None:
                raise ValueError(f"{name} ranks by layers: run `benchmarks layers` first")
            relevance = block_scores(per_layer, variant.neighbours, variant.layers)
        else:
            relevance = torch.tensor(read["relevance"][variant.ranking])
            relevance = with_neighbours(relevance, variant.neighbours)
        passages = passages_for(
            relevance, layout.document_span, config.replace(**variant.config_fields())
        )
    separator = encode_text(engine.tokenizer, SEPARATOR)
    ids = reread_ids(layout.input_ids, passages, layout.document_span, separator)
    options = dict(VARIANTS[name].options) if name in VARIANTS else {}
    answer = engine.generate(ids, mode="full", max_new_tokens=sample.max_new_tokens, **options)
    inside = bool(spans) and all(
        any(p.start <= lo and hi <= p.end for p in passages) for lo, hi in spans
    )
    return {
        "sample_id": sample.sample_id,
        "task": sample.task,
        "length": sample.length,
        "variant": name,
        "answer": answer.text,
        "correct": score(sample.expected, answer.text),
        "finish_reason": answer.finish_reason,
        "tokens_generated": answer.stats.tokens_generated,
        "inside": inside,
        "reread_tokens": sum(p.end - p.start for p in passages),
        "prefill_seconds": answer.stats.prefill_seconds,
        "decode_seconds": answer.stats.decode_seconds,
    }


def answer_rag(rag: Any, sample: Sample) -> dict[str, Any]:
    """``rag``'s answer to ``sample`` as a variant record (``inside``: a chunk held the fact)."""
    answer = rag.answer(sample)
    return {
        "sample_id": sample.sample_id,
        "task": sample.task,
        "length": sample.length,
        "variant": "rag",
        "answer": answer.text,
        "correct": score(sample.expected, answer.text),
        "inside": answer.evidence_rank is not None,
        "tokens_generated": answer.tokens_generated,
        "reread_tokens": answer.tokens_read,
        "index_seconds": answer.extra["index_seconds"],
        "prefill_seconds": answer.prefill_seconds,
        "decode_seconds": answer.decode_seconds,
    }


def run_passages(
    engine: Any,
    samples: Iterable[Sample],
    paths: Paths,
    set_name: str,
    variants: list[str],
    *,
    command: str,
    answers_only: bool = False,
) -> dict[str, Any]:
    """Read every sample once and answer it with each variant; resumes from earlier records.

    ``variants`` may name ``rag`` (chunk-and-embed RAG, :mod:`benchmarks.rag`) and
    :data:`SINGLE_PASS` besides the re-read variants; ``answers_only``: read nothing,
    answer only what needs no read of its own (``rag``, or variants of samples read
    already), e.g. beside a process that reads.
    """
    folder = paths.out / f"passages-{set_name}"
    folder.mkdir(parents=True, exist_ok=True)
    reads_path, answers_path = folder / "reads.jsonl", folder / "answers.jsonl"
    reads = {r["sample_id"]: r for r in runner.read_records(reads_path)}
    answers = runner.read_records(answers_path)
    done = {(r["sample_id"], r["variant"]) for r in answers}
    meta = {
        "commands": commands_of(paths.results / f"passages-{set_name}.json", command),
        "machine": machine.describe(str(engine.model.device)),
        "model": engine.model_name,
        "config": dataclasses.asdict(engine.config),
        "variants": {
            name: dataclasses.asdict(VARIANTS[name]) for name in variants if name in VARIANTS
        },
        "oracle_tokens": ORACLE_TOKENS,
    }
    summary: dict[str, Any] = {}
    rag = None
    for sample in tqdm(list(samples), desc=f"passages {set_name}", unit="sample"):
        layout = None  # built once per sample, when a read or a re-read needs it
        single = SINGLE_PASS in variants and (sample.sample_id, SINGLE_PASS) not in done
        if (sample.sample_id not in reads or single) and not answers_only:
            # a sample read before the single pass was asked for is read again for it
            layout = sample_prompt(engine, sample)
            read, record = read_sample(engine, sample, layout, single_pass=single)
            if sample.sample_id not in reads:
                reads[sample.sample_id] = _append(reads_path, read)
            if record is not None:
                answers.append(_append(answers_path, record))
        for name in ("oracle", *variants):
            if (sample.sample_id, name) in done or name == SINGLE_PASS:
                continue
            if name != "rag" and sample.sample_id not in reads:
                continue  # answers_only: not read yet
            if name == "rag":
                if rag is None:
                    from .rag import RagSystem, minilm_embeddings

                    rag = RagSystem(engine, minilm_embeddings())
                record = answer_rag(rag, sample)
            else:
                layout = layout or sample_prompt(engine, sample)
                read = reads[sample.sample_id]
                variant = VARIANTS.get(name)
                per_layer = None
                if variant is not None and variant.layers is not None:
                    dump = paths.out / f"layers-{set_name}" / f"{sample.sample_id}.pt"
                    if not dump.exists():
                        continue  # its layers are not dumped yet
                    per_layer = layer_relevance(torch.load(dump)["log_mass"], variant.ranking)
                record = answer_variant(engine, sample, layout, read, name, per_layer)
            answers.append(_append(answers_path, record))
        summary = {
            "meta": meta | {"date": machine.now()},
            "reads": [{k: v for k, v in r.items() if k != "relevance"} for r in reads.values()],
            "answers": answers,
        }
        save_json(paths.results / f"passages-{set_name}.json", summary)
        if set_name == HEATMAP:
            heatmap_figures(summary, paths)
    return summary


HEATMAP_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
HEATMAP_LENGTHS = (4096, 8192, 16384, 32768, 65536, 131072)


def heatmap_samples(tokenizer: Any, lengths: Sequence[int], seed: int = 0) -> list[Sample]:
    """A needle at each of :data:`HEATMAP_DEPTHS` for each length, shortest lengths first.

    A run stopped early has whole columns.
    """
    return [
        make_sample(tokenizer, "needle", length, depth, seed)
        for length in sorted(lengths)
        for depth in HEATMAP_DEPTHS
    ]


def heatmap_figures(summary: dict[str, Any], paths: Paths) -> None:
    """``figures/heatmap-<system>.png``: depth x length accuracy of each heatmap system."""
    from .figures import needle_heatmap

    depth = {r["sample_id"]: r["depth"] for r in summary["reads"]}
    for system in HEATMAP_SYSTEMS:
        records = [
            {**a, "system": system, "depth": depth[a["sample_id"]], "status": "ok"}
            for a in summary["answers"]
            if a["variant"] == system and a["sample_id"] in depth
        ]
        if records:
            title = f"needle, {system} ({HEATMAP_SYSTEMS[system]})"
            needle_heatmap(records, system, paths.figures / f"heatmap-{system}.png", title)


def commands_of(summary: Path, command: str) -> list[str]:
    """The commands of every invocation that added to the results in ``summary``, this one
    last."""
    meta = (load_json(summary) or {}).get("meta", {})
    earlier = meta.get("commands") or ([meta["command"]] if "command" in meta else [])
    return [c for c in earlier if c != command] + [command]


def _append(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")
    return record
