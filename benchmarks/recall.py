"""Retrieval recall: where the memory block holding a planted fact ranks after the read.

``python -m benchmarks recall --tasks needle two_hop --lengths 16384 --samples 5`` reads
each sample once in mode ``qllm`` (the paper's read, question before and after the document)
and ranks every memory block against the question two ways, per layer and averaged over
layers:

- ``question . repr``: the paper's question term, the question vector against each block's
  representative key (softmax over blocks per head, averaged over heads);
- ``attention``: the final question's queries against every key of every block, each block's
  share of that attention (what ``reread_tokens`` ranks by).

A fact's rank is the best rank among the blocks its tokens fall in; facts that sat outside
the memory blocks (initial tokens, local window) are counted apart. The samples come from a
calibration seed (default 1000), not the benchmark's, so that nothing chosen from them is
tuned to the benchmark's samples.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import torch
from tabulate import tabulate

from .tasks import Sample, make_sample

RECALL_AT: tuple[int, ...] = (4, 8, 16, 48)
"""Cut-offs reported (48 blocks of 64 tokens are about the default re-read budget)."""


@dataclass(frozen=True)
class FactRanks:
    """Ranks (0 = best) of one fact's block under each scoring; ``None``: not in a block."""

    sample_id: str
    task: str
    length: int
    attention: int | None
    repr_score: int | None
    best_layer_attention: int | None
    median_layer_attention: float | None
    blocks: int


def fact_ranks(engine: Any, sample: Sample) -> list[FactRanks]:
    """Read ``sample`` once (mode ``qllm``) and rank every planted fact's block."""
    from qllm_core.inputs.prompt import build_prompt
    from qllm_core.memory.request import RequestPlan
    from qllm_core.memory.retrieval import question_shares

    config = engine.config.replace(mode="qllm", reread_tokens=0)
    layout = build_prompt(engine.tokenizer, sample.document, sample.question)
    plan = RequestPlan(
        question_span=layout.question_span,
        record_from=len(layout.input_ids),
        rank_span=layout.final_question_span,
    )
    step = engine.new_forward(config, plan)
    ids = layout.input_ids
    with torch.inference_mode():
        for start in range(0, len(ids), config.prefill_chunk_size):
            step(ids[start : start + config.prefill_chunk_size])
        memory = step.memory
        attention = memory.block_relevance()  # (layers, blocks)
        by_repr = torch.stack(
            [
                question_shares(memory.layers[i].store.representatives, memory.layers[i].question)
                for i in sorted(memory.layers)
            ]
        ).cpu()  # (layers, blocks)
    out = []
    for span in sample.evidence:
        blocks = _fact_blocks(layout, span, config.n_init, config.block_size, attention.shape[1])
        per_layer = [_rank(row, blocks) for row in attention]
        ranked = [r for r in per_layer if r is not None]
        out.append(
            FactRanks(
                sample.sample_id,
                sample.task,
                sample.length,
                _rank(attention.mean(dim=0), blocks),
                _rank(by_repr.mean(dim=0), blocks),
                min(ranked) if ranked else None,
                statistics.median(ranked) if ranked else None,
                attention.shape[1],
            )
        )
    return out


def _fact_blocks(
    layout: Any, span: tuple[int, int], n_init: int, block_size: int, blocks: int
) -> list[int]:
    doc_start = layout.document_span[0]
    found = set()
    for i, (lo, hi) in enumerate(layout.document_offsets or []):
        if lo < span[1] and span[0] < hi:
            block = (doc_start + i - n_init) // block_size
            if doc_start + i >= n_init and block < blocks:
                found.add(block)
    return sorted(found)


def _rank(scores: torch.Tensor, blocks: list[int]) -> int | None:
    if not blocks:
        return None
    order = scores.argsort(descending=True, stable=True).tolist()
    position = {block: rank for rank, block in enumerate(order)}
    return min(position[b] for b in blocks)


def run_recall(
    engine: Any, tasks: list[str], lengths: list[int], samples: int, seed: int
) -> list[FactRanks]:
    """Fact ranks for every (task, length, index)."""
    out = []
    for length in lengths:
        for task in tasks:
            for index in range(samples):
                sample = make_sample(engine.tokenizer, task, length, None, seed, index)
                out += fact_ranks(engine, sample)
                print(out[-1], flush=True)
    return out


def recall_table(ranks: list[FactRanks]) -> str:
    """Recall@k per length and scoring, over the facts that sat in memory blocks."""
    rows = []
    for length in sorted({r.length for r in ranks}):
        mine = [r for r in ranks if r.length == length]
        in_blocks = [r for r in mine if r.attention is not None]
        for name, get in (
            ("attention, mean of layers", lambda r: r.attention),
            ("question . repr, mean of layers", lambda r: r.repr_score),
            ("attention, best single layer (oracle)", lambda r: r.best_layer_attention),
            ("attention, median layer", lambda r: r.median_layer_attention),
        ):
            values = [get(r) for r in in_blocks]
            rows.append(
                [length, name, f"{len(in_blocks)}/{len(mine)}"]
                + [f"{sum(v < k for v in values)}/{len(values)}" for k in RECALL_AT]
                + [", ".join(str(round(v)) for v in values)]
            )
    return tabulate(
        rows,
        ["length", "scoring", "facts in blocks"] + [f"recall@{k}" for k in RECALL_AT] + ["ranks"],
        tablefmt="github",
    )
